from partitions.cli import main

main()
