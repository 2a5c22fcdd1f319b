"""The help texts of the CLI and of its interactive shell."""

USAGE = """\
usage: ocho [OPTIONS] TOOL [ARGS...]      run a tool, print its output live
       ocho [OPTIONS] run TOOL [ARGS...]  the same, for a tool named like a command
       ocho jobs [--state S] [--tool T] [-n N] [--json]
       ocho status ID [--json] [--wait SECONDS]
       ocho output ID [--follow]
       ocho cancel ID [--no-wait]
       ocho help [TOOL]                   the tools there are, or one tool's options
       ocho completion bash|zsh|fish      shell completion (source <(ocho completion bash))
       ocho                               an interactive shell (on a terminal)

Run a tool:  ocho deploy zookeeper.yml -p 3      ocho log 'zoo*'
  Everything after TOOL goes to the tool unchanged, except local files:
  - an argument naming an existing local file (defs/zookeeper.yml, or the value
    in --opt=FILE) is uploaded with the job under its base name, and the
    argument becomes that base name: the tool runs in a directory holding the
    uploads, so `ocho deploy defs/zookeeper.yml` just works;
  - a quoted pattern ('*.yml', 'defs/*.yml') uploads every local file it matches
    and reaches the tool as a pattern for those files ('*.yml'), for the tool to
    expand (deploy does). A pattern that matches no local file ('zoo*') is sent
    as it is;
  - directories are never uploaded, nor files named with a leading '.' (ocho
    refuses those rather than send a name the tool cannot open); --no-upload
    sends every argument as plain text.
  - a word that looks like a file (*.yml, *.yaml, *.json, or a path in an
    existing directory) but is not one is refused: nothing is sent;
  The tool's stdout goes to stdout and its stderr to stderr as it runs (on a
  terminal, control characters show as \\x1b and the like); ocho's own notes
  go to stderr. Ctrl-C asks whether to cancel the job (y) or leave it
  running and detach (n).

Commands take precedence over tools: a tool named like a command (run, jobs,
status, output, cancel, help, completion) runs as `ocho run NAME ...`.

options (before TOOL or the command):
  --url URL          the gateway (OCHO_URL, default http://127.0.0.1:9000)
  --token TOKEN      sent as 'Authorization: Bearer TOKEN' (OCHO_TOKEN)
  --timeout SECONDS  the job's time limit (the portal caps it)
  -d, --detach       submit, print the job id on stdout, do not wait
  --no-upload        upload no files; send every argument as text
  -v, --verbose      say when the job is submitted and how it ended
  -V, --version      print ocho's version
  -h, --help         this help;  ocho COMMAND --help for a command's

exit status:
  0       the job succeeded (or the command worked)
  1-123   the tool's own exit code, passed through
  124     the job timed out
  125     refused: an ocho usage error, a bad request (unknown tool, bad
          arguments or files), an unknown job, or the job was rejected
  126     the gateway cannot be reached or used (down, token refused, 5xx),
          or the portal could not start the tool
  128+N   the tool was killed by signal N (137: SIGKILL, e.g. its memory limit)
  130     the job was cancelled, or you detached from it with Ctrl-C
  A tool that itself exits with 124-130 is passed through too; stderr says which.

In the shell, type what follows `ocho` (`deploy x.yml`, `jobs`, `help`); `exit`
or Ctrl-D leaves it. History is kept in ~/.ocho_history.
"""

SHELL_HELP = """\
Type a command line as you would after `ocho`:
  TOOL ARGS...        run a tool (local files in ARGS are uploaded)
  run TOOL ARGS...    run a tool named like a command
  jobs | status ID | output ID [--follow] | cancel ID
  help [TOOL]         the tools, or one tool's options
  clear               clear the screen
  exit, quit          leave (or Ctrl-D)
"""
