"""netem's delay, loss and reordering in user space, for kernels built without sch_netem.

    ip netns exec NS python userspace_netem.py --queue 7 --delay 0.2 --jitter 0.05 \\
        --loss 0.05 --reorder 0.1 --seed 1

Packets reach it through an iptables ``NFQUEUE`` rule (``--queue-bypass``: without this
process they pass untouched). Each one, as ``tc qdisc ... netem delay 200ms 50ms loss 5%
reorder 10%`` would: is dropped with probability ``loss``; else sent at once with
probability ``reorder`` (overtaking the delayed ones); else held ``delay`` ± ``jitter``
seconds (uniform), so jitter reorders too. The kernel releases a packet when this process
gives its verdict: the packets really are late, lost and out of order on the wire, and TCP
deals with them as it would on a bad network.

Pure standard library: the nfnetlink_queue protocol over an ``AF_NETLINK`` socket. Prints
``ready`` once the queue is bound, and its counts as one JSON line on SIGTERM.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NLMSG_ERROR = 2
NF_DROP = 0
NF_ACCEPT = 1
NLMSG_HDR = struct.Struct("=IHHII")


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _message(msg_type: int, flags: int, queue: int, attrs: bytes, seq: int = 0) -> bytes:
    nfgen = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue))
    body = nfgen + attrs
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(body), msg_type, flags, seq, 0) + body


class NetlinkQueue:
    """One nfnetlink queue: packet ids in, verdicts out."""

    def __init__(self, queue: int) -> None:
        self.queue = queue
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((0, 0))
        config = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG
        cmd = _attr(NFQA_CFG_CMD, struct.pack("=BBH", NFQNL_CFG_CMD_BIND, 0, 0))
        self._request(_message(config, NLM_F_REQUEST | NLM_F_ACK, queue, cmd, seq=1))
        # Metadata only: the verdict needs the packet id, not its bytes.
        params = _attr(NFQA_CFG_PARAMS, struct.pack(">IB", 0, NFQNL_COPY_META))
        maxlen = _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack(">I", 8192))
        self._request(_message(config, NLM_F_REQUEST | NLM_F_ACK, queue, params + maxlen, seq=2))

    def _request(self, message: bytes) -> None:
        self.sock.send(message)
        reply = self.sock.recv(65536)
        _, kind, _, _, _ = NLMSG_HDR.unpack_from(reply)
        if kind == NLMSG_ERROR:
            (error,) = struct.unpack_from("=i", reply, NLMSG_HDR.size)
            if error:
                raise OSError(-error, f"nfnetlink_queue config refused: errno {-error}")

    def packet_ids(self) -> list[int]:
        """The ids of the packets in one read (blocks until there is one)."""
        data = self.sock.recv(1 << 20)
        ids, offset = [], 0
        while offset + NLMSG_HDR.size <= len(data):
            length, kind, _, _, _ = NLMSG_HDR.unpack_from(data, offset)
            if length < NLMSG_HDR.size:
                break
            if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                pos, end = offset + NLMSG_HDR.size + 4, offset + length
                while pos + 4 <= end:
                    attr_len, attr_kind = struct.unpack_from("=HH", data, pos)
                    if attr_len < 4:
                        break
                    if attr_kind & 0x3FFF == NFQA_PACKET_HDR:
                        ids.append(struct.unpack_from(">I", data, pos + 4)[0])
                    pos += (attr_len + 3) & ~3
            offset += (length + 3) & ~3
        return ids

    def verdict(self, packet_id: int, verdict: int) -> None:
        kind = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_VERDICT
        attrs = _attr(NFQA_VERDICT_HDR, struct.pack(">II", verdict, packet_id))
        self.sock.send(_message(kind, NLM_F_REQUEST, self.queue, attrs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queue", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.2, help="seconds")
    parser.add_argument("--jitter", type=float, default=0.05, help="seconds, uniform ±")
    parser.add_argument("--loss", type=float, default=0.05)
    parser.add_argument("--reorder", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    queue = NetlinkQueue(args.queue)
    counts = {"packets": 0, "dropped": 0, "sent_at_once": 0, "delayed": 0}
    held: list[tuple[float, int]] = []
    running = True

    def stop(*_: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("ready", flush=True)
    while running:
        timeout = max(0.0, held[0][0] - time.monotonic()) if held else 0.5
        try:
            readable, _, _ = select.select([queue.sock], [], [], timeout)
            if readable:
                for packet_id in queue.packet_ids():
                    counts["packets"] += 1
                    draw = rng.random()
                    if draw < args.loss:
                        counts["dropped"] += 1
                        queue.verdict(packet_id, NF_DROP)
                    elif draw < args.loss + args.reorder:
                        counts["sent_at_once"] += 1
                        queue.verdict(packet_id, NF_ACCEPT)
                    else:
                        counts["delayed"] += 1
                        wait = args.delay + rng.uniform(-args.jitter, args.jitter)
                        heapq.heappush(held, (time.monotonic() + max(0.0, wait), packet_id))
        except InterruptedError:
            continue
        except OSError as exc:  # ENOBUFS: the kernel's queue overflowed; those packets are lost
            counts.setdefault("errors", 0)
            counts["errors"] += 1
            print(f"netem: {exc}", file=sys.stderr, flush=True)
        now = time.monotonic()
        while held and held[0][0] <= now:
            queue.verdict(heapq.heappop(held)[1], NF_ACCEPT)
    for _, packet_id in held:  # nothing stays stuck in the kernel after we go
        queue.verdict(packet_id, NF_ACCEPT)
    print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
