from neus2cli.cli import main

main()
