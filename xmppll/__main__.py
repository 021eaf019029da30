from xmppll.cli.fast import main

main()
