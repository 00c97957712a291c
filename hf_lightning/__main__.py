from hf_lightning.cli import main

main()
