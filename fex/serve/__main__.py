from fex.serve.cli import main

main()
