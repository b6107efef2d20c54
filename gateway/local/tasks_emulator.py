"""The Cloud Tasks emulator (gcloud-tasks-emulator) listening on loopback only.

The package serves its gRPC API on `[::]:PORT`, every interface of the machine, with no option to
choose; this launcher runs the same server with the API bound to 127.0.0.1, like every other piece
of the local stack. Run as a script (`python tasks_emulator.py --port N [-d QUEUE]...`) by
gateway/local/emulators.py; it imports nothing of the gateway.
"""

from __future__ import annotations

import argparse
import logging
import time
from concurrent import futures

import grpc
from gcloud_tasks_emulator import server
from gcloud_tasks_emulator.cloudtasks_pb2_grpc import add_CloudTasksServicer_to_server

HOST = "127.0.0.1"


class LoopbackAPIThread(server.APIThread):
    """The emulator's API thread, its gRPC server bound to loopback instead of `[::]`."""

    def run(self) -> None:
        self._httpd = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        add_CloudTasksServicer_to_server(server.Greeter(self._state), self._httpd)
        self._httpd.add_insecure_port(f"{HOST}:{self._port}")
        self._httpd.start()
        self._is_running.set()
        while self._is_running.is_set():
            time.sleep(0.1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Cloud Tasks emulator on 127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("-d", "--default-queue", action="append", default=[],
                        help="a queue to create at start: projects/P/locations/L/queues/Q")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    emulator = server.create_server(HOST, args.port, default_queue_names=args.default_queue)
    emulator._api = LoopbackAPIThread(emulator._state, HOST, args.port)  # the package has no bind option
    emulator.run()


if __name__ == "__main__":
    main()
