"""Hosts made of Linux network namespaces, each with its own address and a real ``sshd``.

    from hosts import Hosts
    with Hosts(3) as cluster:               # needs root, ip(8), sshd (tools/bootstrap.sh)
        cluster.hosts                       # ['ge1a2b-h1', 'ge1a2b-h2', 'ge1a2b-h3']
        cluster.interface                   # 'ge1a2b': the same name on every host and the head
        env = cluster.env(os.environ)       # PATH leads to the cluster's own `ssh`
        subprocess.run(["ssh", cluster.hosts[0], "hostname -I"], env=env)
        cluster.kill_host(cluster.hosts[1]) # every process of that namespace, SIGKILL at once
        cluster.link_down(cluster.hosts[2]) # a cable pulled: no reset packet reaches anyone

Layout: a bridge named :attr:`Hosts.interface` in the root namespace (the head, where drivers and
supervisors run) holds the first address of a private /24 (10.197.X.0/24, X chosen so that no
interface or route of this machine overlaps it); every host is a namespace whose end of a veth
pair carries the same name and the next address. Gloo takes one interface name
(``--network-interface``), which is why the names match. Names resolve through lines this
harness appends to ``/etc/hosts`` (marked with its id) and removes at the end; each host's
``sshd`` (and so everything it starts) also runs in a UTS namespace of its own whose host name is
the host's, so that a host's name resolves to its own address there, as on a real machine.
:meth:`Hosts.shape` shapes the links with ``tc`` (netem, or tbf for the rate alone where the
kernel has no netem). A harness only ever uses the addresses of the subnet it created.

``ssh``: a private directory (``/run/gluon_elastic-hosts-<id>``, mode 0700; ``sshd``'s
StrictModes refuses keys under world-writable directories such as ``/tmp``) holds a host key, a
client key, ``authorized_keys``, ``known_hosts``, an ``sshd_config``, an ``ssh_config`` and
``bin/ssh``, a wrapper that runs ``/usr/bin/ssh -F <ssh_config>``. OpenSSH reads ``~/.ssh`` from
the password database, not from ``$HOME``, so the wrapper and its config are how this harness
avoids the user's ``~/.ssh``, which it never touches. The wrapper also runs every remote command
under :mod:`gluon_elastic.hostguard`, so that a worker dies with its ``ssh`` session (``ssh``
without a terminal sends no hang-up). Keep-alives bound how long a dead link goes unnoticed
(``ServerAliveInterval`` / ``ServerAliveCountMax`` in the client, ``ClientAliveInterval`` /
``ClientAliveCountMax`` in ``sshd``, 2 s and 3 both): with a host's link down, its ``sshd``
dropped the session 14.9 s later here (7.4 s with an interval of 1 s), and the guard ended the
remote command 0.4 s after that.

Teardown (:meth:`Hosts.close`, also registered with :mod:`atexit`) kills every process of every
namespace (``sshd`` and whatever it started), deletes the namespaces and the bridge, removes the
``/etc/hosts`` lines and the private directory. It runs once, whatever failed before.
"""
import atexit
import ipaddress
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SSHD = "/usr/sbin/sshd"
SSH = "/usr/bin/ssh"
ETC_HOSTS = "/etc/hosts"
GUARD = os.path.join(ROOT, "gluon_elastic", "hostguard.py")
# Set in CI (.ci/run): the multi-host tests fail instead of skipping when hosts cannot be made.
REQUIRE_VAR = "GLUON_ELASTIC_REQUIRE_MULTIHOST"
# Keep-alive interval and count of the ssh client and of sshd (seconds, probes).
ALIVE_INTERVAL = 2
ALIVE_COUNT = 3

__all__ = ["Hosts", "unavailable_reason", "require_hosts", "sweep_stale", "REQUIRE_VAR"]


def _run(argv, check=True, timeout=30):
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(argv), result.returncode,
                                                   (result.stderr or result.stdout).strip()))
    return result


def unavailable_reason():
    """Why namespace hosts cannot be made here, or None when they can.

    Returns
    -------
    str or None
        A sentence naming what is missing (not root, no ``ip``, no ``sshd``, namespaces refused).
    """
    if os.geteuid() != 0:
        return "network namespaces need root (running as uid %d)" % os.geteuid()
    for tool in ("ip", "tc", "ssh-keygen", "unshare"):
        if shutil.which(tool) is None:
            return "%s is not installed (tools/bootstrap.sh installs iproute2 and openssh)" % tool
    for path in (SSHD, SSH):
        if not os.path.exists(path):
            return "%s is missing (tools/bootstrap.sh installs openssh-server as root)" % path
    probe = "ge-probe-%d" % os.getpid()
    result = _run(["ip", "netns", "add", probe], check=False)
    if result.returncode != 0:
        return "cannot create a network namespace: %s" % result.stderr.strip()
    _run(["ip", "netns", "del", probe], check=False)
    return None


def require_hosts():
    """Skip the calling test when namespace hosts cannot be made here, with the reason.

    With ``GLUON_ELASTIC_REQUIRE_MULTIHOST=1`` (set by ``.ci/run``: CI runs as root and must run
    these tests) it fails instead.
    """
    import pytest  # only the tests call this

    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get(REQUIRE_VAR) == "1":
        pytest.fail("multi-host tests cannot run (%s=1): %s" % (REQUIRE_VAR, reason))
    pytest.skip("multi-host tests need namespace hosts: %s" % reason)


def _free_subnet():
    """A 10.197.X.0/24 that no address or route of this machine overlaps."""
    used = _run(["ip", "-4", "-o", "addr"]).stdout + _run(["ip", "-4", "route"]).stdout
    networks = []
    for token in used.split():
        try:
            networks.append(ipaddress.ip_network(token, strict=False))
        except ValueError:
            continue
    choices = list(range(1, 255))
    random.shuffle(choices)
    for third in choices:
        candidate = ipaddress.ip_network("10.197.%d.0/24" % third)
        if not any(candidate.overlaps(net) for net in networks):
            return candidate
    raise RuntimeError("no free 10.197.X.0/24 subnet")


class Hosts:
    """``count`` namespace hosts with ``sshd``, on a private bridge (see the module docstring).

    Parameters
    ----------
    count : int
        Number of hosts.
    shape : dict, optional
        ``tc netem`` shaping of every host's link, e.g. ``{"rate": "10gbit", "delay": "0.1ms"}``
        (applied to what each host sends, so a message between two hosts crosses it once).

    Attributes
    ----------
    ident : str
        4 hex digits naming this harness's namespaces, interface and ``/etc/hosts`` lines.
    hosts : list of str
        Host names, ``ge<ident>-h1`` ...
    addresses : dict
        Host name -> its IPv4 address.
    head_address : str
        The head's (root namespace's) address on the bridge.
    interface : str
        Name of the interface of every host and of the head's bridge.
    directory : str
        The private directory with keys and configurations.
    """

    def __init__(self, count, shape=None):
        self.count = count
        self.shape_spec = shape
        self.ident = "%04x" % random.randrange(1 << 16)
        self.interface = "ge%s" % self.ident
        self.hosts = ["ge%s-h%d" % (self.ident, i + 1) for i in range(count)]
        self.namespaces = {host: "gluon_elastic-%s" % host for host in self.hosts}
        self.addresses = {}
        self.head_address = None
        self.directory = None
        self.sshd = {}
        self.shaping = {"rate": None, "delay": None, "qdisc": None}
        self._hosts_line_marker = "# gluon_elastic hosts %s" % self.ident
        self._closed = False
        self._started = False

    # -------------------------------------------------------------------------------- set-up
    def __enter__(self):
        return self.start()

    def __exit__(self, *_exc):
        self.close()

    def start(self):
        """Create namespaces, links, addresses, keys, ``sshd`` and names; returns ``self``."""
        atexit.register(self.close)
        self._started = True
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self):
        sweep_stale()
        subnet = _free_subnet()
        addresses = [str(a) for a in subnet.hosts()]
        self.head_address = addresses[0]
        self.directory = tempfile.mkdtemp(prefix="gluon_elastic-hosts-%s-" % self.ident,
                                          dir="/run")
        os.chmod(self.directory, 0o700)
        with open(os.path.join(self.directory, "owner"), "w") as fout:
            fout.write("%d\n" % os.getpid())  # sweep_stale() tells a live harness by it
        _run(["ip", "link", "add", self.interface, "type", "bridge"])
        _run(["ip", "addr", "add", "%s/24" % self.head_address, "dev", self.interface])
        _run(["ip", "link", "set", self.interface, "up"])
        for index, host in enumerate(self.hosts):
            namespace = self.namespaces[host]
            address = addresses[index + 1]
            self.addresses[host] = address
            peer = self._peer(host)
            inside = "%sn%d" % (self.interface, index + 1)
            _run(["ip", "netns", "add", namespace])
            _run(["ip", "link", "add", peer, "type", "veth", "peer", "name", inside])
            _run(["ip", "link", "set", peer, "master", self.interface, "up"])
            _run(["ip", "link", "set", inside, "netns", namespace])
            # Renamed inside the namespace, where the name is free: every host gets the same one.
            _run(["ip", "-n", namespace, "link", "set", inside, "name", self.interface])
            _run(["ip", "-n", namespace, "addr", "add", "%s/24" % address, "dev",
                  self.interface])
            _run(["ip", "-n", namespace, "link", "set", self.interface, "up"])
            _run(["ip", "-n", namespace, "link", "set", "lo", "up"])
        if self.shape_spec:
            self.shape(**self.shape_spec)
        self._write_names()
        self._write_ssh_files()
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        for host in self.hosts:
            self._start_sshd(host)
        self.wait_for_ssh()

    def _write_names(self):
        lines = ["%s %s %s\n" % (self.addresses[h], h, self._hosts_line_marker)
                 for h in self.hosts]
        # Appended in place: /etc/hosts may be a bind mount that cannot be replaced.
        with open(ETC_HOSTS, "a") as fout:
            fout.write("".join(lines))

    def _write_ssh_files(self):
        d = self.directory
        for key in ("host_key", "id_ed25519"):
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "gluon_elastic-hosts",
                  "-f", os.path.join(d, key)])
        with open(os.path.join(d, "id_ed25519.pub")) as fin:
            client_key = fin.read()
        with open(os.path.join(d, "host_key.pub")) as fin:
            host_key = " ".join(fin.read().split()[:2])
        self._write(os.path.join(d, "authorized_keys"), client_key, 0o600)
        self._write(os.path.join(d, "known_hosts"), "".join(
            "%s,%s %s\n" % (h, self.addresses[h], host_key) for h in self.hosts), 0o600)
        self._write(os.path.join(d, "sshd_config"), "\n".join([
            "HostKey %s/host_key" % d,
            "AuthorizedKeysFile %s/authorized_keys" % d,
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes yes",
            "UseDNS no",
            "ClientAliveInterval %d" % ALIVE_INTERVAL,
            "ClientAliveCountMax %d" % ALIVE_COUNT,
            "MaxStartups 200",
            "MaxSessions 200",
            "LogLevel ERROR",
            ""]), 0o600)
        self._write(os.path.join(d, "ssh_config"), "\n".join([
            "Host *",
            "  User root",
            "  IdentityFile %s/id_ed25519" % d,
            "  IdentitiesOnly yes",
            "  UserKnownHostsFile %s/known_hosts" % d,
            "  GlobalKnownHostsFile /dev/null",
            "  StrictHostKeyChecking yes",
            "  PasswordAuthentication no",
            "  BatchMode yes",
            "  ServerAliveInterval %d" % ALIVE_INTERVAL,
            "  ServerAliveCountMax %d" % ALIVE_COUNT,
            "  ConnectTimeout 10",
            "  LogLevel ERROR",
            ""]), 0o600)
        os.makedirs(os.path.join(d, "bin"), mode=0o700)
        # The remote command becomes `exec PYTHON GUARD -- bash -c 'COMMAND'`: it dies with its
        # session. The last argument is the remote command both for Horovod's launching
        # (`ssh -o ... HOST 'cd ...; env ... python ...'`) and for gluon_elastic.supervisor.
        self._write(os.path.join(d, "bin", "ssh"), "\n".join([
            "#!/bin/bash",
            "args=(\"$@\")",
            "last=${args[-1]}",
            "unset 'args[-1]'",
            "printf -v quoted %q \"$last\"",
            "exec %s -F %s \"${args[@]}\" \"exec %s %s -- bash -c $quoted\"" % (
                SSH, shlex.quote(os.path.join(d, "ssh_config")), shlex.quote(sys.executable),
                shlex.quote(GUARD)),
            ""]), 0o700)

    @staticmethod
    def _write(path, text, mode):
        with open(path, "w") as fout:
            fout.write(text)
        os.chmod(path, mode)

    def _start_sshd(self, host):
        log = open(os.path.join(self.directory, "sshd.%s.log" % host), "wb")
        # A UTS namespace too, named after the host: gethostname() there resolves to the host's
        # own address, as on a real machine. Horovod 0.28.1 builds the Gloo device of its process
        # sets from the host name, not from HOROVOD_GLOO_IFACE; with the head's name a worker
        # would offer 127.0.0.1 to its peers.
        sshd = [SSHD, "-D", "-e", "-f", os.path.join(self.directory, "sshd_config"),
                "-o", "ListenAddress=%s" % self.addresses[host],
                "-o", "PidFile=%s/sshd.%s.pid" % (self.directory, host)]
        self.sshd[host] = subprocess.Popen(
            ["ip", "netns", "exec", self.namespaces[host], "unshare", "--uts", "sh", "-c",
             'hostname "$0" && exec "$@"', host] + sshd,
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        log.close()

    def wait_for_ssh(self, hosts=None, timeout=30.0):
        """Wait until ``ssh HOST true`` works on every host (or ``hosts``)."""
        env = self.env(os.environ)
        deadline = time.monotonic() + timeout
        for host in hosts or self.hosts:
            while True:
                result = subprocess.run(["ssh", host, "true"], env=env, capture_output=True,
                                        text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                                        check=False)
                if result.returncode == 0:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("ssh %s never answered: %s" % (host, result.stderr))
                time.sleep(0.2)

    # ------------------------------------------------------------------------------- helpers
    @property
    def ssh_wrapper(self):
        """Path of the ``ssh`` wrapper (``bin/ssh`` in the private directory)."""
        return os.path.join(self.directory, "bin", "ssh")

    def env(self, base=None):
        """``base`` (default: ``os.environ``) with the wrapper's directory first on ``PATH``."""
        env = dict(os.environ if base is None else base)
        env["PATH"] = os.path.join(self.directory, "bin") + os.pathsep + env.get("PATH", "")
        return env

    def pids(self, host):
        """Pids of every process in ``host``'s namespace (``sshd`` included)."""
        result = _run(["ip", "netns", "pids", self.namespaces[host]], check=False)
        return [int(pid) for pid in result.stdout.split()]

    def worker_pids(self, host):
        """Pids in ``host``'s namespace other than its listening ``sshd`` and ``ip netns exec``."""
        keep = set()
        proc = self.sshd.get(host)
        if proc is not None:
            keep.add(proc.pid)
            try:
                with open(os.path.join(self.directory, "sshd.%s.pid" % host)) as fin:
                    keep.add(int(fin.read().strip()))
            except (OSError, ValueError):
                pass
        return [pid for pid in self.pids(host) if pid not in keep]

    def leftovers(self):
        """``{host: [pids]}`` of processes other than the listening ``sshd`` on each host."""
        found = {}
        for host in self.hosts:
            pids = [pid for pid in self.worker_pids(host) if _alive(pid)]
            if pids:
                found[host] = [(pid, _cmdline(pid)) for pid in pids]
        return found

    def kill_host(self, host):
        """SIGKILL every process of ``host``'s namespace at once (its ``sshd`` too)."""
        pids = self.pids(host)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids

    def link_down(self, host):
        """Set ``host``'s link down: nothing it sends or is sent arrives, no reset included."""
        _run(["ip", "-n", self.namespaces[host], "link", "set", self.interface, "down"])

    def link_up(self, host):
        """Bring ``host``'s link back."""
        _run(["ip", "-n", self.namespaces[host], "link", "set", self.interface, "up"])

    def shape(self, rate=None, delay=None):
        """Shape every host's outgoing link (e.g. ``rate="10gbit"``, ``delay="0.1ms"``).

        ``tc netem`` gives both; a kernel without netem (``sch_netem`` not built) gets the rate
        alone from ``tc tbf``, and :attr:`shaping` says so (``delay`` None).

        Returns
        -------
        dict
            :attr:`shaping`: the ``rate`` and ``delay`` in force and the ``qdisc`` used.
        """
        applied = None
        for host in self.hosts:
            base = ["ip", "netns", "exec", self.namespaces[host], "tc", "qdisc", "replace", "dev",
                    self.interface, "root"]
            if applied in (None, "netem") and (delay or applied == "netem"):
                spec = (["delay", delay] if delay else []) + (["rate", rate] if rate else [])
                result = _run(base + ["netem"] + spec + ["limit", "100000"], check=False)
                if result.returncode == 0:
                    applied = "netem"
                    continue
                if applied == "netem" or "unknown" not in result.stderr or not rate:
                    raise RuntimeError("tc netem on %s: %s" % (host, result.stderr.strip()))
            if rate:
                # Bucket of 4 MB: above rate / HZ for 10 Gbit/s, so the rate is reachable.
                _run(base + ["tbf", "rate", rate, "burst", "4mb", "latency", "50ms"])
                applied = "tbf"
        self.shaping = {"rate": rate, "delay": delay if applied == "netem" else None,
                        "qdisc": applied}
        return self.shaping

    def _in_host(self, host, code, *args, background=False):
        argv = ["ip", "netns", "exec", self.namespaces[host], sys.executable, "-c", code] \
            + [str(a) for a in args]
        if background:
            return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
        return _run(argv, timeout=120).stdout

    def bandwidth(self, source, target, num_bytes=256 << 20, chunk=4 << 20):
        """Bytes per second of one TCP stream from host ``source`` to host ``target``.

        What one Gloo connection can get through the link (its shaping included).
        """
        sink = self._in_host(target, _SINK, self.addresses[target], num_bytes, chunk,
                             background=True)
        try:
            out = self._in_host(source, _SOURCE, self.addresses[target], num_bytes, chunk)
        finally:
            sink.wait(timeout=120)
        return float(out.split()[-1])

    def round_trip(self, source, target, count=200):
        """Median seconds of a 1-byte TCP ping-pong between two hosts (the link's latency floor)."""
        echo = self._in_host(target, _ECHO, self.addresses[target], count, background=True)
        try:
            out = self._in_host(source, _PING, self.addresses[target], count)
        finally:
            echo.wait(timeout=120)
        return float(out.split()[-1])

    # ------------------------------------------------------------------------------ teardown
    def close(self):
        """Remove everything this harness made (idempotent; never raises)."""
        if self._closed or not self._started:
            return
        self._closed = True
        for host in self.hosts:
            namespace = self.namespaces[host]
            for _ in range(3):  # processes may fork while they are killed
                pids = self.pids(host) if _exists_netns(namespace) else []
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.1)
        for proc in self.sshd.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for host in self.hosts:
            _run(["ip", "netns", "del", self.namespaces[host]], check=False)
            # The head's end of the host's veth pair, deleted explicitly: a deleted namespace
            # lives on in the kernel while orphaned TCP sockets in it still retransmit (after a
            # partition, for minutes), and its veth pair with it.
            _run(["ip", "link", "del", self._peer(host)], check=False)
        _run(["ip", "link", "del", self.interface], check=False)
        try:
            with open(ETC_HOSTS, "r+") as fio:
                lines = fio.readlines()
                kept = [line for line in lines if self._hosts_line_marker not in line]
                if kept != lines:
                    fio.seek(0)
                    fio.writelines(kept)
                    fio.truncate()
        except OSError:
            pass
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _peer(self, host):
        """Name of the head's end of ``host``'s veth pair."""
        return "%sp%s" % (self.interface, host.rsplit("-h", 1)[1])

    def remaining(self):
        """What of this harness still exists: namespaces, links, ``/etc/hosts`` lines."""
        left = [ns for ns in self.namespaces.values() if _exists_netns(ns)]
        for link in [self.interface] + [self._peer(host) for host in self.hosts]:
            if _run(["ip", "link", "show", link], check=False).returncode == 0:
                left.append("link %s" % link)
        with open(ETC_HOSTS) as fin:
            left.extend(line.strip() for line in fin if self._hosts_line_marker in line)
        return left


def sweep_stale():
    """Remove what harnesses whose process died (SIGKILLed, no teardown ran) left behind.

    Only this harness's own objects are touched: namespaces ``gluon_elastic-ge<id>-h<n>``,
    the bridge ``ge<id>``, ``/etc/hosts`` lines marked with ``<id>`` and the directory
    ``/run/gluon_elastic-hosts-<id>-*`` and the head's ends ``ge<id>p<n>`` of veth pairs, for
    ids whose directory names a dead owner (or whose directory is gone while namespaces or
    links remain).

    Returns
    -------
    list of str
        The ids swept.
    """
    import glob

    live, ids = set(), set()
    for directory in glob.glob("/run/gluon_elastic-hosts-*"):
        ident = os.path.basename(directory).split("-")[2]
        try:
            with open(os.path.join(directory, "owner")) as fin:
                owner = int(fin.read())
            os.kill(owner, 0)
            live.add(ident)
        except (OSError, ValueError):
            ids.add(ident)
    for path in glob.glob("/run/netns/gluon_elastic-ge*-h*"):
        ident = os.path.basename(path)[len("gluon_elastic-ge"):].split("-")[0]
        if ident not in live:
            ids.add(ident)
    # Heads' ends of veth pairs whose namespace was deleted but lingers in the kernel.
    links = _run(["ip", "-o", "link", "show"], check=False).stdout
    for name in re.findall(r"^\d+: (ge[0-9a-f]{4}p\d+)[@:]", links, re.M):
        if name[2:6] not in live:
            _run(["ip", "link", "del", name], check=False)
            ids.add(name[2:6])
    for ident in sorted(ids):
        stale = Hosts(0)
        stale.ident, stale.interface = ident, "ge%s" % ident
        stale.hosts = [os.path.basename(p)[len("gluon_elastic-"):] for p in
                       glob.glob("/run/netns/gluon_elastic-ge%s-h*" % ident)]
        stale.namespaces = {host: "gluon_elastic-%s" % host for host in stale.hosts}
        stale._hosts_line_marker = "# gluon_elastic hosts %s" % ident  # pylint: disable=W0212
        found = glob.glob("/run/gluon_elastic-hosts-%s-*" % ident)
        stale.directory = found[0] if found else None
        stale._started = True  # pylint: disable=protected-access
        stale.close()
    return sorted(ids)


def _exists_netns(namespace):
    return os.path.exists(os.path.join("/run/netns", namespace))


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as fin:
            return fin.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def _cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as fin:
            return fin.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


# Helpers run inside a host with `python -c` (argv: address, then sizes or counts). The server
# side retries its bind until the address is up and prints nothing; port 5201 is free in a
# namespace of this harness.
_SERVER = ("import socket, sys, time\n"
           "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
           "s.bind((sys.argv[1], 5201)); s.listen(1); c, _ = s.accept()\n"
           "c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n")
_CLIENT = ("import socket, sys, time\n"
           "for _ in range(100):\n"
           "    try:\n"
           "        c = socket.create_connection((sys.argv[1], 5201)); break\n"
           "    except OSError:\n"
           "        time.sleep(0.05)\n"
           "c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n")
_SINK = _SERVER + ("n, chunk, got = int(sys.argv[2]), int(sys.argv[3]), 0\n"
                   "while got < n:\n"
                   "    b = c.recv(chunk)\n"
                   "    if not b: break\n"
                   "    got += len(b)\n"
                   "c.sendall(b'k')\n")
_SOURCE = _CLIENT + ("n, chunk = int(sys.argv[2]), int(sys.argv[3]); p = b'\\0' * chunk\n"
                     "t = time.time()\n"
                     "for _ in range(n // chunk): c.sendall(p)\n"
                     "c.recv(1); print(n / (time.time() - t))\n")
_ECHO = _SERVER + ("for _ in range(int(sys.argv[2])): c.sendall(c.recv(1))\n")
_PING = _CLIENT + ("import statistics; times = []\n"
                   "for _ in range(int(sys.argv[2])):\n"
                   "    t = time.perf_counter(); c.sendall(b'x'); c.recv(1)\n"
                   "    times.append(time.perf_counter() - t)\n"
                   "print(statistics.median(times))\n")
