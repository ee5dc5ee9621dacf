#!/usr/bin/env python3
"""A real SMTP server for tests and local development (aiosmtpd).

Every accepted message is stored as an .eml file in --dir (written to a temporary name, then
renamed, so readers never see half a message). Recipients whose local part starts with "bounce"
are refused with 550, like a mailbox that does not exist. Stops on SIGTERM or Ctrl-C.
"""
import argparse
import os
import signal
import time
import uuid

from aiosmtpd.controller import Controller


class Sink:
    def __init__(self, folder):
        self.folder = folder

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.split("@")[0].lower().startswith("bounce"):
            return "550 5.1.1 <%s>: mailbox unavailable" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        name = "%d-%s.eml" % (time.time_ns(), uuid.uuid4().hex)
        path = os.path.join(self.folder, name)
        with open(path + ".tmp", "wb") as out:
            out.write(b"X-Envelope-From: %s\r\n" % envelope.mail_from.encode())
            out.write(b"X-Envelope-To: %s\r\n" % ", ".join(envelope.rcpt_tos).encode())
            out.write(envelope.original_content)
        os.rename(path + ".tmp", path)
        return "250 Message accepted for delivery"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2525)
    parser.add_argument("--dir", required=True)
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    controller = Controller(Sink(args.dir), hostname=args.host, port=args.port)
    controller.start()
    print("smtp-sink listening on %s:%d, storing messages in %s" % (args.host, args.port, args.dir), flush=True)
    signal.sigwait([signal.SIGINT, signal.SIGTERM])
    controller.stop()


if __name__ == "__main__":
    main()
