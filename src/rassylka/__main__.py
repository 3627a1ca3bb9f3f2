from rassylka.cli import main

main()
