"""Stand-in for ``ssh`` in the supervisor's remote-host test: runs the remote command here.

    kv_fake_ssh.py [-o OPTION]... [-p PORT] HOST REMOTE_COMMAND

Appends ``HOST<TAB>REMOTE_COMMAND`` to the file named by ``KV_FAKE_SSH_LOG``, then runs the
command with ``bash -c`` in an environment stripped of every ``DMLC_*`` and ``GLUON_ELASTIC_*``
variable, as a fresh login on another host would be: the command's own ``export`` must bring them.
"""
import os
import sys


def main():
    args = sys.argv[1:]
    while args and args[0] in ("-o", "-p"):
        args = args[2:]
    host, remote = args[0], " ".join(args[1:])
    with open(os.environ["KV_FAKE_SSH_LOG"], "a") as fout:
        fout.write("%s\t%s\n" % (host, remote))
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("DMLC_", "GLUON_ELASTIC_"))}
    os.execvpe("bash", ["bash", "-c", remote], env)


if __name__ == "__main__":
    main()
