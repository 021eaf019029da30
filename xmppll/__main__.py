from xmppll.cli.commands import main

main()
