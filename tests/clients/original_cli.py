#! /usr/bin/env python
# ruff: noqa - Python 2.7 code in the original's style, on purpose (see below).
"""A stand-in for the original ochonetes CLI (autodesk-cloud/ochonetes, cli.py, 2015),
written from its wire behaviour to test that the portal still serves it.

What it does, as the original did: a `cmd.Cmd` loop; every line becomes
`curl -X POST -H "X-Shell:<line>" [-F NAME=@PATH ...] PROXY/shell`, where each
space-separated word naming a local file is uploaded under its base name (the
field's name) and replaced by that base name in the line; the answer is printed
as `json.loads(answer)['out']` when curl exits 0, whatever the HTTP status; any
exception ends it with "internal failure <- ..." and exit status 1; Ctrl-C
(SIGINT) ends it with 0. (`precmd` prefixes every line with `shell`, so even
`exit` is sent to the portal, and end of input loops sending `EOF`: the
original could only be left with Ctrl-C, and so is this one.)

Two differences, neither on the wire: curl is run with an argument list instead
of a shell string (the project runs no shell), and the proxy is HOST:PORT (the
original appended :9000). Runs under Python 2.7 (as the original) and 3; run
it with -u when its output is read through a pipe.
"""
from __future__ import print_function

import cmd
import json
import os
import sys
from os.path import isfile
from subprocess import PIPE, Popen
from sys import exit


def cli():
    if len(sys.argv) > 1:
        proxy = sys.argv[1]
    elif 'OCHOPOD_PROXY' in os.environ:
        proxy = os.environ['OCHOPOD_PROXY']
    else:
        print('either set $OCHOPOD_PROXY or pass the proxy IP as an argument')
        exit(1)

    class Shell(cmd.Cmd):

        prompt = '%s > ' % proxy
        ruler = '-'

        def precmd(self, line):
            return 'shell %s' % line

        def emptyline(self):
            pass

        def do_exit(self, _):
            raise KeyboardInterrupt

        def do_shell(self, line):
            if line:
                tokens = line.split(' ')
                local = [isfile(os.path.expanduser(token)) for token in tokens]
                files = []
                for token, is_file in zip(tokens, local):
                    if is_file:
                        files += ['-F', '%s=@%s' % (os.path.basename(token),
                                                    os.path.expanduser(token))]
                new_line = ' '.join([os.path.basename(token) if is_file else token
                                     for token, is_file in zip(tokens, local)])
                argv = ['curl', '-s', '-X', 'POST', '-H', 'X-Shell:%s' % new_line] + files
                code, out = self._exec(argv + ['%s/shell' % proxy])
                print(json.loads(out)['out'] if code == 0 else 'i/o failure (is the proxy down ?)')

        def _exec(self, argv):
            pid = Popen(argv, stdout=PIPE, stderr=PIPE)
            out, _ = pid.communicate()
            return pid.returncode, out.decode('utf-8') if not isinstance(out, str) else out

    print('welcome to the ocho CLI ! (CTRL-C to exit)')
    try:
        Shell().cmdloop()
    except KeyboardInterrupt:
        exit(0)
    except Exception as failure:
        print('internal failure <- %s' % str(failure))
        exit(1)


if __name__ == "__main__":
    cli()
