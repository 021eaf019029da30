from xmppll.cli import main

main()
