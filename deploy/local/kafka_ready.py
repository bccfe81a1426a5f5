"""Readiness probe for the local Kafka broker: one metadata round trip.

Usage: python kafka_ready.py HOST PORT [TIMEOUT_S]
Exit 0 when the broker answers a Metadata request listing at least one broker, else 1.

Uses aiokafka's admin client when importable (the client the project uses), otherwise a
hand-rolled Metadata v4 request over a plain socket (stdlib only, so it works before the
venv exists). Each attempt is bounded by TIMEOUT_S; the caller does the polling.
"""
import asyncio
import socket
import struct
import sys


def _raw_metadata(host: str, port: int, timeout: float) -> bool:
    client_id = b"local-ready"
    # Request header v1: api_key=3 (Metadata), api_version=4, correlation_id, client_id
    # Body v4: topics = empty array (no topics), allow_auto_topic_creation = false
    body = struct.pack(">hhih", 3, 4, 7, len(client_id)) + client_id + struct.pack(">i?", 0, False)
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(struct.pack(">i", len(body)) + body)
        hdr = b""
        while len(hdr) < 4:
            chunk = s.recv(4 - len(hdr))
            if not chunk:
                return False
            hdr += chunk
        (size,) = struct.unpack(">i", hdr)
        data = b""
        while len(data) < size:
            chunk = s.recv(size - len(data))
            if not chunk:
                return False
            data += chunk
    corr, _throttle, n_brokers = struct.unpack(">iii", data[:12])
    return corr == 7 and n_brokers > 0


async def _aiokafka(host: str, port: int, timeout: float) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(
        bootstrap_servers=f"{host}:{port}", request_timeout_ms=int(timeout * 1000)
    )
    try:
        await asyncio.wait_for(admin.start(), timeout)
        await asyncio.wait_for(admin.list_topics(), timeout)
        cluster = await asyncio.wait_for(admin.describe_cluster(), timeout)
        return len(cluster.get("brokers", [])) > 0
    finally:
        try:
            await asyncio.wait_for(admin.close(), timeout)
        except Exception:
            pass


def main() -> int:
    host, port = sys.argv[1], int(sys.argv[2])
    timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 5.0
    try:
        import aiokafka  # noqa: F401
    except Exception:
        use_aiokafka = False
    else:
        use_aiokafka = True
    try:
        if use_aiokafka:
            ok = asyncio.run(_aiokafka(host, port, timeout))
        else:
            ok = _raw_metadata(host, port, timeout)
    except Exception as exc:  # not ready yet
        print(f"not ready: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
