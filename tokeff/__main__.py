from tokeff.cli.app import main

main()
