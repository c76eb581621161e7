"""Send identify and track calls to ``automation serve`` with the official Segment client.

    AUTOMATION_WRITE_KEYS=wk_demo automation serve --port 8080 &
    python examples/send_events.py --host http://127.0.0.1:8080 --write-key wk_demo

The identify creates (or updates) the customer, signed up now; the track call is an event the
rules ask about: ``events("referral_sent", within="90d") > 0`` moves a customer into the loyalty
stage of playbooks/lifecycle.yaml.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from segment import analytics


def client(host: str, write_key: str) -> analytics.Client:
    return analytics.Client(write_key, host=host, sync_mode=True, max_retries=3)


def identify(sender: analytics.Client, user_id: str, timezone: str = "UTC") -> None:
    traits = {
        "email": f"{user_id}@example.com",
        "firstName": "Ada",
        "createdAt": datetime.now(UTC).isoformat(),
    }
    sender.identify(user_id, traits, context={"timezone": timezone})


def refer_a_friend(sender: analytics.Client, user_id: str) -> None:
    sender.track(user_id, "referral_sent", {"channel": "invite_link"}, message_id=f"{user_id}-referral-1")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="http://127.0.0.1:8080")
    parser.add_argument("--write-key", required=True)
    parser.add_argument("--user-id", default="live-ada")
    args = parser.parse_args()
    sender = client(args.host, args.write_key)
    identify(sender, args.user_id)
    refer_a_friend(sender, args.user_id)
    sender.flush()
