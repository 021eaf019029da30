"""The command-line face: click commands, rendering, config, man pages, completion.
The only part of xmppll that imports click."""

COMPLETE_VAR = "_XMPPLL_COMPLETE"  # set by the shell when it asks for completions
