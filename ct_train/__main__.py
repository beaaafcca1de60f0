from ct_train.cli import main

main()
