#!/usr/bin/env python3
"""Cluster end-to-end test: docker-compose.cluster.yml (3 NATS JetStream
nodes, 2 brokers on the JetStream backend, 2 replicas of every service) on
the real Docker engine, with one NATS node and one broker SIGKILLed while
orders are being placed.

1. build the images as deploy/compose_e2e.py does (deploy/Dockerfile.prebuilt
   after deploy/build-static.sh) plus `nats:2.15` (deploy/nats/build-image.sh),
   `up -d`; wait until the NATS cluster has formed and every container is
   healthy;
2. place ORDERS orders, spread over both orders replicas, each retried with
   its idempotency key until acknowledged;
3. meanwhile SIGKILL the NATS node leading the `orders` stream (asked from
   its monitor, /jsz?streams=true) and one broker; orders must still be
   acknowledged while both are down; then start them again;
4. check the totals: every order SHIPPED on both orders replicas, exactly
   one payment and one shipment event per order in the log, every order
   invoiced, both analytics replicas' totals, no group lagging and no dead
   letters (asked of both brokers), a dry-run SeekGroup through both
   brokers, and no service container restarted;
5. `down -v` at the end, also after a failure (with each service's log tail).

The whole scenario runs under a time budget (CLUSTER_E2E_BUDGET seconds,
default 540, build included; a run takes about 4 minutes, 6.5 with two busy loops on the 2 cores); every wait is bounded on its own as well.

Usage: deploy/compose_cluster_e2e.py  (needs docker, docker-compose, grpcurl)
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Before compose_e2e is imported: its docker-compose calls take the project
# and the file from the environment it copies at import.
os.environ.setdefault("COMPOSE_PROJECT_NAME", "meshcluster")
os.environ["COMPOSE_FILE"] = os.path.join(ROOT, "docker-compose.cluster.yml")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compose_e2e as e2e  # noqa: E402
from compose_e2e import dc, eventually, grpcurl, log  # noqa: E402

e2e.LOG_TAG = "cluster-e2e"
ORDERS = int(os.environ.get("CLUSTER_E2E_ORDERS", "40"))
BUDGET = int(os.environ.get("CLUSTER_E2E_BUDGET", "540"))
# Each service's gRPC port inside its containers.
GRPC = {"broker": 50051, "orders": 50052, "billing": 50053, "shipping": 50054,
        "analytics": 50055, "notifications": 50056}
SERVICES = ["orders", "billing", "shipping", "analytics", "notifications"]
NATS = ["nats-1", "nats-2", "nats-3"]
REPLICAS = 2
# Seconds between two orders, so that placing them spans the kills.
PACE = float(os.environ.get("CLUSTER_E2E_PACE", "0.25"))
CUSTOMER = "cust-cluster"
# Host ports are ephemeral and a restarted container gets a new one, so
# they are looked up (`docker-compose port`) and forgotten after a restart.
_ports = {}


def host_port(service, port, index=1):
    key = (service, port, index)
    if key not in _ports:
        out = dc("port", "--index", str(index), service, str(port), capture=True).strip()
        if not out or ":" not in out:
            raise RuntimeError(f"{service} #{index} publishes no port {port}: {out!r}")
        _ports[key] = int(out.rsplit(":", 1)[1])
    return _ports[key]


def address(target):
    """`orders` or `orders.2` (the second replica) -> localhost:port; the
    certificates are valid for localhost."""
    service, _, index = target.partition(".")
    return f"localhost:{host_port(service, GRPC[service], int(index or 1))}"


e2e.address = address


def container_ids(service):
    """service -> [container id by index 1..n] (compose's container number)."""
    ids = {}
    for cid in e2e.containers(service):
        n = subprocess.run(["docker", "inspect", "-f", '{{index .Config.Labels "com.docker.compose.container-number"}}', cid],
                           text=True, capture_output=True, check=True).stdout.strip()
        ids[int(n)] = cid
    return [ids[i] for i in sorted(ids)]


def docker_inspect(cid, fmt):
    return subprocess.run(["docker", "inspect", "-f", fmt, cid], text=True, capture_output=True, check=True).stdout.strip()


def wait_healthy(services, timeout=180):
    def ok():
        return all(docker_inspect(c, "{{.State.Health.Status}}") == "healthy"
                   for s in services for c in container_ids(s)) and all(
            len(container_ids(s)) == REPLICAS for s in services)
    eventually(f"{services} healthy", ok, timeout=timeout)
    log(f"healthy: {', '.join(services)}")


def monitor(node, path):
    url = f"http://127.0.0.1:{host_port(node, 8222)}{path}"
    with urllib.request.urlopen(url, timeout=3) as r:
        return json.load(r)


def nats_formed():
    """Every node healthy, one meta leader among them, 3 peers."""
    leaders = set()
    for n in NATS:
        monitor(n, "/healthz")  # raises unless 200
        meta = monitor(n, "/jsz").get("meta_cluster", {})
        if meta.get("cluster_size") != 3:
            return False
        leaders.add(meta.get("leader"))
    return len(leaders) == 1 and leaders <= set(NATS)


def nats_tls():
    """Every node requires TLS with a client certificate, on its client
    port and on its routes (the brokers reach them over it: they are
    healthy only after that)."""
    for n in NATS:
        v = monitor(n, "/varz")
        c = v.get("cluster", {})
        got = (v.get("tls_required"), v.get("tls_verify"), c.get("tls_required"), c.get("tls_verify"))
        if got != (True, True, True, True):
            raise SystemExit(f"{n}: TLS (clients required/verify, routes required/verify) is {got}")
    log("NATS: mutual TLS on every node's client port and routes")


def orders_stream_leader():
    """The NATS node leading the `orders` topic's stream, or None."""
    for n in NATS:
        try:
            jsz = monitor(n, "/jsz?streams=true")
        except Exception:
            continue
        for acc in jsz.get("account_details", []):
            for st in acc.get("stream_detail", []):
                if st.get("name", "").endswith("-orders"):
                    leader = (st.get("cluster") or {}).get("leader")
                    if leader in NATS:
                        return leader
    return None


def orders_on(replica):
    """order id -> status, as one orders replica's book has it."""
    r = grpcurl(f"orders.{replica}", "mesh.orders.v1.Orders/ListOrders", {"customer_id": CUSTOMER})
    return {o["orderId"]: o.get("status") for o in r.get("orders", [])}


def all_shipped(ids):
    return all(all(orders_on(r).get(i) == "ORDER_STATUS_SHIPPED" for i in ids) for r in range(1, REPLICAS + 1))


def exactly_once(topic, ids):
    """One event per order in `topic`'s log; reads longer while any is missing
    (the stream never ends, so it is read for a while)."""
    for seconds in (5, 15, 45):
        counts = e2e.events_by_order(topic, seconds)
        twice = {o: n for o, n in counts.items() if n != 1}
        assert not twice, f"an event of {topic} more than once in the log: {twice}"
        if set(ids) <= set(counts):
            return
    raise AssertionError(f"orders without an event in {topic}: {sorted(set(ids) - set(counts))}")


def stats_match(replica, want_orders, revenue):
    s = grpcurl(f"analytics.{replica}", "mesh.analytics.v1.Analytics/GetStats", {})
    ok = (s.get("caughtUp") and int(s.get("orders", 0)) == want_orders
          and int(s.get("paymentsAuthorized", 0)) == want_orders
          and int(s.get("shipments", 0)) == want_orders
          and s.get("revenue") and int(s["revenue"][0]["amountMinor"]) == revenue)
    return s if ok else None


GROUPS = [("orders", "billing"), ("payments", "shipping"), ("payments", "orders"),
          ("shipments", "orders"), ("shipments", "notifications")]


def groups_settled():
    """Every consumer group has consumed everything, nothing dead-lettered,
    as both brokers report it (the one not holding a group forwards the
    call to the one that does)."""
    out = {}
    for b in range(1, REPLICAS + 1):
        for topic, group in GROUPS:
            g = grpcurl(f"broker.{b}", "mesh.broker.v1.Broker/DescribeGroup", {"topic": topic, "group": group})
            out[f"{group}@{topic} via broker #{b}"] = (int(g.get("lagEvents", 0)), int(g.get("deadLettered", 0)))
    return out if all(v == (0, 0) for v in out.values()) else None


class Budget(BaseException):  # not an Exception: eventually() must not swallow it
    pass


def over_budget(signum, frame):
    raise Budget(f"the scenario took more than its budget of {BUDGET}s (CLUSTER_E2E_BUDGET)")


def main():
    t0 = time.time()
    signal.signal(signal.SIGALRM, over_budget)
    signal.alarm(BUDGET)
    try:
        log(f"compose: {dc('version', capture=True).splitlines()[0]}; {ORDERS} orders; budget {BUDGET}s")
        subprocess.run([os.path.join(ROOT, "deploy", "nats", "build-image.sh")], check=True, timeout=300)
        dc("build")
        dc("up", "-d")
        eventually("the NATS cluster formed", nats_formed, timeout=90)
        nats_tls()
        wait_healthy(["broker"] + SERVICES)
        log(f"up in {time.time() - t0:.0f}s")
        started = {c: docker_inspect(c, "{{.State.StartedAt}}") for s in SERVICES for c in container_ids(s)}

        # Looked up now: docker-compose takes a second or more per call, and
        # the kills must land while orders are being placed.
        nats_cids = {n: container_ids(n)[0] for n in NATS}
        broker_cid = container_ids("broker")[0]
        for r in range(1, REPLICAS + 1):
            address(f"orders.{r}")
        acked, errors = {}, []

        def producer():
            for i in range(ORDERS):
                key = f"cluster-{i}"
                for attempt in range(30):  # the same key every time: never a second order
                    replica = (i + attempt) % REPLICAS + 1
                    try:
                        o = grpcurl(f"orders.{replica}", "mesh.orders.v1.Orders/PlaceOrder", {
                            "idempotency_key": key, "customer_id": CUSTOMER,
                            "items": [{"sku": "sku-1", "quantity": 1,
                                       "unit_price": {"currency": "EUR", "amount_minor": 1_000 + i}}],
                        }, timeout=20)
                        acked[o["orderId"]] = 1_000 + i
                        break
                    except Exception as e:
                        errors.append(f"{key} via orders.{replica}: {str(e)[-300:]}")
                        time.sleep(1)
                time.sleep(PACE)

        t = threading.Thread(target=producer, daemon=True)
        t.start()
        eventually("some orders before the kills", lambda: len(acked) >= ORDERS // 4, timeout=60, every=0.05)
        leader = orders_stream_leader()
        victim_nats = leader or "nats-1"
        nats_cid = nats_cids[victim_nats]
        subprocess.run(["docker", "kill", "-s", "KILL", nats_cid, broker_cid], check=True, capture_output=True)
        before = len(acked)
        log(f"SIGKILLed {victim_nats} ({'the orders stream leader' if leader else 'no leader found'}) "
            f"and broker #1 after {before} acknowledged orders")
        # The cluster works on with one node and one broker gone.
        eventually("orders acknowledged with a NATS node and a broker down",
                   lambda: len(acked) >= min(ORDERS, before + 5), timeout=90, every=0.1)
        log(f"{len(acked) - before} more orders acknowledged while both were down")
        subprocess.run(["docker", "start", nats_cid, broker_cid], check=True, capture_output=True)
        _ports.clear()
        eventually("the NATS cluster formed again", nats_formed, timeout=90)
        wait_healthy(["broker"])
        t.join(timeout=240)
        assert not t.is_alive(), "the producer did not finish"
        assert len(acked) == ORDERS, f"only {len(acked)} of {ORDERS} orders acknowledged; errors: {errors[-3:]}"
        log(f"all {ORDERS} orders acknowledged ({len(errors)} calls failed and were retried)")
        for e in errors[:3]:
            log(f"  retried: {e}")

        ids = sorted(acked)
        eventually("every order SHIPPED on both orders replicas", lambda: all_shipped(ids), timeout=120)
        exactly_once("payments", ids)
        exactly_once("shipments", ids)
        invoiced = set()
        for r in range(1, REPLICAS + 1):
            invoiced |= {i["orderId"] for i in grpcurl(f"billing.{r}", "mesh.billing.v1.Billing/ListInvoices", {}).get("invoices", [])}
        assert set(ids) <= invoiced, f"orders without an invoice: {sorted(set(ids) - invoiced)}"
        log("every order shipped, billed exactly once and shipped exactly once")
        revenue = sum(acked.values())
        for r in range(1, REPLICAS + 1):
            s = eventually(f"analytics #{r} totals", lambda: stats_match(r, ORDERS, revenue), timeout=60)
            log(f"analytics #{r}: {s['orders']} orders, revenue {s['revenue'][0]}")
        g = eventually("every group consumed everything, no dead letters", groups_settled, timeout=60)
        log(f"groups settled (lag, dead letters): {g}")
        # An operator's seek works through either broker: the one not holding
        # the group forwards it, as principal broker (acl.toml).
        for b in range(1, REPLICAS + 1):
            grpcurl(f"broker.{b}", "mesh.broker.v1.Broker/SeekGroup", {
                "topic": "orders", "group": "billing", "position": {"earliest": {}}, "dry_run": True})
        log("a dry-run SeekGroup answers through both brokers")
        for c, at in started.items():
            assert docker_inspect(c, "{{.State.StartedAt}}") == at, f"service container {c[:12]} was restarted"
        log(f"PASS in {time.time() - t0:.0f}s")
        return 0
    except BaseException:
        signal.alarm(0)
        e2e.dump_logs(["broker"] + NATS + SERVICES, lines=60)
        raise
    finally:
        signal.alarm(0)
        e2e.teardown()


if __name__ == "__main__":
    sys.exit(main())
