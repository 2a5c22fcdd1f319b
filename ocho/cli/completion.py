"""`ocho completion bash|zsh|fish`: shell completion scripts, with the tool names
from the gateway's catalog.

The scripts are static; the tool names are asked for when completing, with
`ocho completion --tools` (GET /tools through the usual OCHO_URL/OCHO_TOKEN),
which prints one name a line and nothing at all when the gateway cannot be
reached (invariant: completing never prints an error into the command line).
Install: `source <(ocho completion bash)` in ~/.bashrc; zsh: the same with
`zsh`; fish: `ocho completion fish > ~/.config/fish/completions/ocho.fish`.
"""

from __future__ import annotations

import sys

from ocho.cli.errors import EXIT_OK, CliError, refused

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ocho.cli.follow import Terminal
    from ocho.cli.options import Options

COMMANDS = "run jobs status output cancel help completion"
OPTIONS = "--url --token --timeout --detach --no-upload --verbose --help --version"

BASH = f"""\
# ocho completion for bash: source <(ocho completion bash)
_ocho_complete() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" first="${{COMP_WORDS[1]}}"
    if [ "$COMP_CWORD" -eq 1 ]; then
        if [[ "$cur" == -* ]]; then
            COMPREPLY=($(compgen -W "{OPTIONS}" -- "$cur"))
        else
            COMPREPLY=($(compgen -W "{COMMANDS} $(ocho completion --tools 2>/dev/null)" \\
                -- "$cur"))
        fi
    elif [ "$COMP_CWORD" -eq 2 ] && [[ "$first" == help || "$first" == run ]]; then
        COMPREPLY=($(compgen -W "$(ocho completion --tools 2>/dev/null)" -- "$cur"))
    elif [ "$COMP_CWORD" -eq 2 ] && [ "$first" = completion ]; then
        COMPREPLY=($(compgen -W "bash zsh fish" -- "$cur"))
    else
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}}
complete -o filenames -F _ocho_complete ocho
"""

ZSH = f"""\
#compdef ocho
# ocho completion for zsh: source <(ocho completion zsh)
_ocho_complete() {{
    local -a tools
    tools=(${{(f)"$(ocho completion --tools 2>/dev/null)"}})
    if (( CURRENT == 2 )); then
        if [[ $PREFIX == -* ]]; then
            compadd -- {OPTIONS}
        else
            compadd -- {COMMANDS} $tools
        fi
    elif (( CURRENT == 3 )) && [[ $words[2] == (help|run) ]]; then
        compadd -- $tools
    elif (( CURRENT == 3 )) && [[ $words[2] == completion ]]; then
        compadd -- bash zsh fish
    else
        _files
    fi
}}
compdef _ocho_complete ocho
"""

FISH = f"""\
# ocho completion for fish: ocho completion fish > ~/.config/fish/completions/ocho.fish
complete -c ocho -n __fish_use_subcommand -f -a '{COMMANDS}'
complete -c ocho -n __fish_use_subcommand -f -a '(ocho completion --tools 2>/dev/null)' \\
    -d tool
complete -c ocho -n '__fish_seen_subcommand_from help run' -f \\
    -a '(ocho completion --tools 2>/dev/null)' -d tool
complete -c ocho -n '__fish_seen_subcommand_from completion' -f -a 'bash zsh fish'
complete -c ocho -l url -r -d 'the gateway (OCHO_URL)'
complete -c ocho -l token -r -d 'bearer token (OCHO_TOKEN)'
complete -c ocho -l timeout -r -d "the job's time limit, seconds"
complete -c ocho -s d -l detach -d 'submit, print the job id, do not wait'
complete -c ocho -l no-upload -d 'send every argument as text'
"""

SCRIPTS = {"bash": BASH, "zsh": ZSH, "fish": FISH}


def cmd_completion(options: Options, words: list[str], terminal: Terminal) -> int:
    if words == ["--tools"]:
        return print_tool_names(options)
    if len(words) != 1 or words[0] not in SCRIPTS:
        if words and words[0] in ("-h", "--help"):
            print(__doc__.split("\n\n")[0] + "\n\nusage: ocho completion bash|zsh|fish")
            return EXIT_OK
        raise refused("usage: ocho completion bash|zsh|fish (e.g. source <(ocho completion "
                      "bash) in ~/.bashrc)")
    sys.stdout.write(SCRIPTS[words[0]])
    return EXIT_OK


def print_tool_names(options: Options) -> int:
    """One tool name a line; nothing when the gateway cannot tell (completion goes on)."""
    try:
        tools = options.gateway().call("GET", "/tools", timeout=3.0)["tools"]
    except (CliError, KeyError, TypeError):
        return EXIT_OK
    sys.stdout.write("".join(f"{tool['name']}\n" for tool in tools))
    return EXIT_OK
