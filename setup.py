from setuptools import setup

setup(
    name="ct_train",
    version="0.1.0",
    description="Curriculum-learning instruction tuning for LLMs on DeepSpeed ZeRO-3",
    python_requires=">=3.10",
    packages=[
        "ct_train",
        "ct_train.data",
        "ct_train.curriculum",
        "ct_train.scoring",
        "ct_train.interaction",
        "ct_train.bench",
        "ct_train.hydra_conf",
        "ct_train.kernels",
    ],
    # hydra_conf/ lives at the top level (the design card's layout) but installs inside the package, so
    # Hydra finds pkg://ct_train.hydra_conf from any directory. kernels/ is a folder without
    # __init__.py, reached as the namespace subpackage ct_train.kernels through the symlink
    # ct_train/kernels: a regular top-level package `kernels` would shadow the PyPI `kernels` that
    # transformers >= 5.25 imports (kernels/README.md).
    package_dir={"ct_train": "ct_train", "ct_train.hydra_conf": "hydra_conf"},
    package_data={"ct_train.hydra_conf": ["*.yaml", "*/*.yaml"]},
    # Compatible ranges; the exact set CI tested is constraints.txt (the Makefile installs from it, `make
    # upgrade-deps` moves it). Upper bounds stop at the next major, or the next minor where we use a
    # library's internals (DeepSpeed: zero.Init / GatheredParameters / universal-checkpoint conversion).
    install_requires=[
        "torch>=2.4,<3",
        "deepspeed>=0.16,<0.20",
        "transformers>=4.46,<6",
        "accelerate>=1.1,<2",  # transformers needs it for its DeepSpeed (HfDeepSpeedConfig) integration
        "datasets>=3.0,<6",
        "hydra-core>=1.3,<1.4",
        "omegaconf>=2.3,<2.4",  # hydra-core 1.3 breaks on omegaconf 2.4
        "wandb>=0.17,<1",
        "tqdm",
        "numpy",
        "pyyaml",
        "matplotlib",
        "scipy",
        "peft>=0.13,<1",  # LoRA (model.lora)
        "tensorboard>=2.14,<3",  # logger=tensorboard (through torch.utils.tensorboard's SummaryWriter)
    ],
    extras_require={
        # bitsandbytes: QLoRA (model.lora.load_in_4bit); liger-kernel: model.liger_kernel
        "gpu": ["flash-attn>=2.5", "bitsandbytes>=0.45", "liger-kernel>=0.8.5"],
        # triton: CI runs the kernel's own code on CPU under TRITON_INTERPRET=1 (CUDA torch builds ship it).
        # liger-kernel: its patching of our models is checked on CPU (its kernels need CUDA).
        # trl: make test runs benchmarks/gpu.py --smoke, TRL's SFTTrainer included
        "dev": ["pytest>=8,<10", "ruff>=0.6", "triton>=3.0,<4", "liger-kernel>=0.8.5", "trl>=1.16,<2"],
        # make bench-peer: the same batches through TRL's SFTTrainer (benchmarks/peer.py)
        "peer": ["trl>=1.16,<2"],
    },
    entry_points={
        "console_scripts": [
            "ct-train=ct_train.cli:main",
            "ct-train-score=ct_train.cli:score_main",
            "ct-train-plot=ct_train.plot:main",
            "ct-train-bench=ct_train.cli:bench_main",
            "ct-train-sample=ct_train.cli:sample_main",
        ]
    },
)
