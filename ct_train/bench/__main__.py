"""`python -m ct_train.bench [--quick] ...` = `ct-train-bench` (also under `deepspeed --module`)."""

from ct_train.cli import bench_main

bench_main()
