#!/usr/bin/env python3
"""Runs the three NATS servers of deploy/k8s/nats.yaml locally and checks them.

    nats_cluster.py NATS_SERVER NATS_YAML

Run by deploy/k8s/validate.sh inside a network and mount namespace of its
own (`unshare --mount --net`), where /etc/hosts maps the pods' names
nats-0.nats, nats-1.nats, nats-2.nats to 127.0.0.10-12. Each server gets
the ConfigMap's nats.conf with only what a pod would differ in changed:
its address instead of 0.0.0.0 (three servers share this host), and its
own store_dir and pid_file in a temporary folder. The routes, JetStream
settings and limits are the ConfigMap's. Checks, each waited for with a
deadline and never by sleeping a fixed time:

- the three form one cluster: each answers the startup probe's /healthz,
  the readiness and liveness probes' /healthz?js-server-only=true and
  ?js-enabled-only=true, and reports a JetStream meta group of 3;
- /varz shows max_payload 8 MiB, sync on every write (sync_interval:
  always) and the file store capped at 9 GiB, under the 10Gi claim;
- an R3 file stream, as the brokers make them (REPLICAS=3), is created and
  a publish is acknowledged;
- the preStop hook's command (`nats-server --signal ldm=<pid_file>`) ends
  one server, and the two left (maxUnavailable 1) still acknowledge a
  publish to the R3 stream.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import yaml

ADDRS = {"nats-0": "127.0.0.10", "nats-1": "127.0.0.11", "nats-2": "127.0.0.12"}
DEADLINE = 60.0


def eventually(what, probe, timeout=DEADLINE):
    """probe() until it returns a true value, at most `timeout` seconds."""
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            got = probe()
            if got:
                return got
            last = got
        except Exception as e:  # a server not up yet: try again
            last = e
        time.sleep(0.2)
    raise SystemExit(f"nats cluster: timed out after {timeout:.0f}s waiting for {what} (last: {last})")


def http(addr, path):
    with urllib.request.urlopen(f"http://{addr}:8222{path}", timeout=3) as r:
        return r.status, r.read().decode()


def healthy(addr, path):
    try:
        status, _ = http(addr, path)
        return status == 200
    except urllib.error.HTTPError:
        return False


class Client:
    """The little of the NATS client protocol needed for JetStream requests."""

    def __init__(self, addr):
        self.sock = socket.create_connection((addr, 4222), timeout=10)
        self.buf = b""
        self.line()  # INFO
        self.sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":false}\r\nSUB _INBOX.check 1\r\n')

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode()

    def request(self, subject, payload):
        data = payload.encode()
        self.sock.sendall(f"PUB {subject} _INBOX.check {len(data)}\r\n".encode() + data + b"\r\n")
        while True:
            line = self.line()
            if line == "PING":
                self.sock.sendall(b"PONG\r\n")
            elif line.startswith("MSG "):
                size = int(line.split()[-1])
                while len(self.buf) < size + 2:
                    self.buf += self.sock.recv(65536)
                body, self.buf = self.buf[:size], self.buf[size + 2:]
                return json.loads(body)
            elif line.startswith("-ERR"):
                raise RuntimeError(line)

    def close(self):
        self.sock.close()


def js(addr, subject, payload):
    c = Client(addr)
    try:
        return c.request(subject, payload)
    finally:
        c.close()


def acked(addr, subject, seq):
    """The stream's ack of one publish if it is the seq-th event, else None."""
    ack = js(addr, subject, f"event {seq}")
    return ack if ack.get("seq") == seq else None


def main():
    binary, nats_yaml = sys.argv[1], sys.argv[2]
    hosts = {}
    for line in pathlib.Path("/etc/hosts").read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        for host in fields[1:]:
            hosts[host] = fields[0]
    if any(hosts.get(f"{name}.nats") != ip for name, ip in ADDRS.items()):
        raise SystemExit("nats_cluster.py: /etc/hosts does not map nats-N.nats; run it through deploy/k8s/validate.sh")
    conf = next(d for d in yaml.safe_load_all(open(nats_yaml)) if d and d["kind"] == "ConfigMap")["data"]["nats.conf"]
    for needle in ("0.0.0.0", "store_dir: /data", "pid_file: /var/run/nats/nats.pid"):
        if needle not in conf:
            raise SystemExit(f"nats_cluster.py: nats.conf has no {needle!r} to adapt; update this script")
    work = pathlib.Path(tempfile.mkdtemp(prefix="k8s-validate-nats."))
    procs = {}
    try:
        for name, ip in ADDRS.items():
            d = work / name
            (d / "data").mkdir(parents=True)
            mine = (conf.replace("0.0.0.0", ip)
                    .replace("store_dir: /data", f"store_dir: {d / 'data'}")
                    .replace("pid_file: /var/run/nats/nats.pid", f"pid_file: {d / 'nats.pid'}"))
            (d / "nats.conf").write_text(mine)
            log = open(d / "log", "w")
            procs[name] = subprocess.Popen([binary, "-c", str(d / "nats.conf")], stdout=log, stderr=subprocess.STDOUT,
                                           env=dict(os.environ, POD_NAME=name))
        for name, ip in ADDRS.items():
            for path in ("/healthz", "/healthz?js-server-only=true", "/healthz?js-enabled-only=true"):
                eventually(f"{name} {path}", lambda: healthy(ip, path))
            eventually(f"{name} in a JetStream meta group of 3",
                       lambda: json.loads(http(ip, "/jsz")[1]).get("meta_cluster", {}).get("cluster_size") == 3)
        print("ok   3 servers of nats.conf form one cluster; /healthz, ?js-server-only, ?js-enabled-only answer 200 on each")
        varz = json.loads(http(ADDRS["nats-0"], "/varz")[1])
        if varz.get("max_payload") != 8 * 1024 * 1024:
            raise SystemExit(f"nats cluster: max_payload is {varz.get('max_payload')}, not 8 MiB")
        jsconf = varz.get("jetstream", {}).get("config", {})
        if jsconf.get("sync_always") is not True:
            raise SystemExit(f"nats cluster: JetStream does not sync every write: {jsconf}")
        if jsconf.get("max_storage") != 9 * 1024**3:
            raise SystemExit(f"nats cluster: max_file_store is {jsconf.get('max_storage')}, not 9 GiB")
        print("ok   max_payload is 8 MiB, JetStream syncs every write, file store capped at 9 GiB")
        stream = json.dumps({"name": "CHECK", "subjects": ["check.>"], "storage": "file", "num_replicas": 3})
        created = eventually("an R3 stream", lambda: js(ADDRS["nats-0"], "$JS.API.STREAM.CREATE.CHECK", stream).get("config"))
        if created.get("num_replicas") != 3:
            raise SystemExit(f"nats cluster: the stream has {created.get('num_replicas')} replicas")
        ack = eventually("a publish ack", lambda: acked(ADDRS["nats-1"], "check.one", 1))
        print(f"ok   R3 file stream created, publish acknowledged: {ack}")
        # The preStop hook of nats.yaml, against nats-2's pid file.
        pid_file = work / "nats-2" / "nats.pid"
        subprocess.run([binary, "--signal", f"ldm={pid_file}"], check=True, capture_output=True)
        try:
            procs["nats-2"].wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            raise SystemExit("nats cluster: nats-2 did not stop after the lame-duck signal")
        print("ok   the preStop lame-duck signal stopped nats-2")
        ack = eventually("a publish ack with one server down", lambda: acked(ADDRS["nats-0"], "check.two", 2))
        print(f"ok   with one of three down, the R3 stream still acknowledges publishes: {ack}")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for name, p in procs.items():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if os.environ.get("NATS_CLUSTER_KEEP"):
            print(f"logs kept in {work}")
        else:
            subprocess.run(["rm", "-rf", str(work)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
