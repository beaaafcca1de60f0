# Hydra config groups, installed as the package `ct_train.hydra_conf` (see setup.py's package_dir).
