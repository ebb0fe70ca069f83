from pdm_bench.cli import main

main()
