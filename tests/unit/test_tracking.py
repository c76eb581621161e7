"""Click and open tracking, the pure part: links rewritten in HTML and text, what is never rewritten,
signed tokens, the open pixel, and the playbook's ``tracking`` field."""

from __future__ import annotations

from pathlib import Path

import pytest

from automation.errors import PlaybookError
from automation.messages.store import RenderedMessage
from automation.messages.tracking import (
    click_token,
    open_token,
    playbook_tracking,
    rewrite_html,
    rewrite_text,
    track,
    verify_click,
    verify_open,
)
from automation.messages.unsubscribe import token as unsubscribe_token
from automation.messages.unsubscribe import verify as verify_unsubscribe
from automation.playbook.models import Tracking, load_playbook
from automation.playbook.schema import playbook_schema
from tests.conftest import ROOT

BASE = "https://t.example"
SECRET = "s3cret"
UNSUBSCRIBE = f"{BASE}/unsubscribe/abc.def"


def _email(html: str | None = None, text: str | None = None) -> RenderedMessage:
    return RenderedMessage(channel="email", template="t", subject="Hi", html=html, text=text)


def _tracked(html: str | None = None, text: str | None = None, **options: bool) -> tuple[str, str, list[str]]:
    result = track(
        _email(html, text),
        base_url=BASE,
        secret=SECRET,
        outbox_id=42,
        clicks=options.get("clicks", True),
        opens=options.get("opens", False),
        unsubscribe_url=UNSUBSCRIBE,
    )
    return result.rendered.html or "", result.rendered.text or "", list(result.links)


def _click(index: int) -> str:
    return f"{BASE}/c/{click_token(SECRET, 42, index)}"


def test_html_links_become_signed_redirects_in_order_of_appearance() -> None:
    html, _, links = _tracked(
        '<p><a href="https://shop.example/a" class="b">A</a> and <A HREF=\'http://shop.example/b\'>B</A>'
        " and <a href=https://shop.example/a>A again</a></p>"
    )
    assert links == ["https://shop.example/a", "http://shop.example/b"]  # the same URL is one link
    assert html == (
        f'<p><a href="{_click(0)}" class="b">A</a> and <A HREF="{_click(1)}">B</A>'
        f' and <a href="{_click(0)}">A again</a></p>'
    )


def test_text_links_are_rewritten_without_the_punctuation_after_them() -> None:
    _, text, links = _tracked(
        text="See https://shop.example/a. Or (https://shop.example/wiki/X_(y)), then https://shop.example/c?q=1!"
    )
    assert links == [
        "https://shop.example/a",
        "https://shop.example/wiki/X_(y)",
        "https://shop.example/c?q=1",
    ]
    assert text == f"See {_click(0)}. Or ({_click(1)}), then {_click(2)}!"


def test_html_and_text_share_the_numbers_of_the_same_url() -> None:
    html, text, links = _tracked(
        '<a href="https://shop.example/x?a=1&amp;b=2">x</a>', "https://shop.example/x?a=1&b=2"
    )
    assert links == ["https://shop.example/x?a=1&b=2"]  # the entity decoded, as the browser reads it
    assert html == f'<a href="{_click(0)}">x</a>'
    assert text == _click(0)


def test_unsubscribe_mailto_tel_and_opted_out_links_are_left_as_written() -> None:
    source = (
        f'<a href="{UNSUBSCRIBE}">Unsubscribe</a>'
        f'<a href="{BASE}/unsubscribe/other.token">other</a>'
        '<a href="mailto:help@shop.example?subject=Hi">mail</a>'
        '<a href="tel:+14155550100">call</a>'
        '<a href="#top">top</a>'
        '<a data-track="off" href="https://shop.example/private">private</a>'
        "<a href='https://shop.example/kept' DATA-TRACK='OFF' title=\"a > b\">kept</a>"
    )
    html, text, links = _tracked(source, f"Unsubscribe: {UNSUBSCRIBE}\nmailto:help@shop.example")
    assert links == []
    # data-track is removed from the sent HTML; everything else stays byte for byte
    assert html == source.replace(' data-track="off"', "").replace(" DATA-TRACK='OFF'", "")
    assert text == f"Unsubscribe: {UNSUBSCRIBE}\nmailto:help@shop.example"


def test_a_data_track_other_than_off_is_removed_and_the_link_tracked() -> None:
    html, _, links = _tracked('<a data-track="on" href="https://shop.example/a">a</a>')
    assert links == ["https://shop.example/a"] and html == f'<a href="{_click(0)}">a</a>'


def test_quotes_and_entities_in_urls_are_kept_exactly() -> None:
    html, _, links = _tracked(
        "<a href='https://shop.example/q?name=\"Ada\"&amp;x=&lt;1&gt;'>q</a>"
        '<a title="x > y" href="https://shop.example/it&#39;s">s</a>'
    )
    assert links == ['https://shop.example/q?name="Ada"&x=<1>', "https://shop.example/it's"]
    assert html == f'<a href="{_click(0)}">q</a><a title="x > y" href="{_click(1)}">s</a>'


def test_a_rewrite_function_returning_none_keeps_the_link() -> None:
    assert (
        rewrite_html('<a href="https://a.example">a</a>', lambda url: None)
        == '<a href="https://a.example">a</a>'
    )
    assert rewrite_text("go https://a.example now", lambda url: None) == "go https://a.example now"
    # an <abbr> is not an <a>
    assert (
        rewrite_html('<abbr href="https://a.example">', lambda url: "X") == '<abbr href="https://a.example">'
    )


def test_the_open_pixel_goes_before_the_last_body_end() -> None:
    html, _, _ = _tracked("<html><body><p>Hi</p></BODY></html>", opens=True, clicks=False)
    pixel = f'<img src="{BASE}/o/{open_token(SECRET, 42)}" width="1" height="1" alt="">'
    assert html == f"<html><body><p>Hi</p>{pixel}</BODY></html>"
    bare, text, _ = _tracked("<p>Hi</p>", "Hi https://a.example", opens=True, clicks=False)
    assert bare == f"<p>Hi</p>{pixel}"  # no </body>: at the end
    assert text == "Hi https://a.example"  # clicks off: links as written


def test_tracking_off_or_without_a_public_url_leaves_the_message_as_rendered() -> None:
    message = _email('<a href="https://a.example">a</a></body>', "https://a.example")
    off = track(message, base_url=BASE, secret=SECRET, outbox_id=1, clicks=False, opens=False)
    assert off.rendered is message and off.links == ()
    no_url = track(message, base_url="", secret=SECRET, outbox_id=1, clicks=True, opens=True)
    assert no_url.rendered is message and no_url.links == ()


def test_click_and_open_tokens_round_trip_and_refuse_forgeries() -> None:
    good = click_token(SECRET, 42, 3)
    assert verify_click(SECRET, good) == (42, 3)
    assert verify_open(SECRET, open_token(SECRET, 42)) == 42
    head, signature = good.split(".")
    altered_signature = f"{head}.{signature[:-1]}{'A' if signature[-1] != 'A' else 'B'}"
    other_message = f"{click_token(SECRET, 43, 3).split('.')[0]}.{signature}"  # another id, this signature
    for bad in (
        click_token("other-secret", 42, 3),
        altered_signature,
        other_message,
        good + ".",
        "garbage",
        "",
        "%%%.%%%",
        open_token(SECRET, 42),  # an open token is no click token
    ):
        assert verify_click(SECRET, bad) is None, bad
    assert verify_open(SECRET, good) is None
    assert verify_open("other-secret", open_token(SECRET, 42)) is None


def test_tracking_tokens_and_unsubscribe_tokens_do_not_verify_as_each_other() -> None:
    assert verify_unsubscribe(SECRET, click_token(SECRET, 42, 0)) is None
    assert verify_click(SECRET, unsubscribe_token(SECRET, "c:42", "0")) is None


def test_tokens_do_not_carry_the_url() -> None:
    _, _, links = _tracked('<a href="https://shop.example/secret-path">a</a>')
    assert links == ["https://shop.example/secret-path"]
    assert "secret-path" not in _click(0) and len(click_token(SECRET, 10**12, 999)) < 60


# -- the playbook field --------------------------------------------------------------------------
def _playbook(tmp_path: Path, tracking: str) -> Path:
    lines = (ROOT / "playbooks" / "lifecycle.yaml").read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("frequency_cap:")) + 1
    path = tmp_path / "pb.yaml"
    path.write_text("\n".join([*lines[:at], tracking, *lines[at:]]) + "\n")
    return path


def test_tracking_defaults_to_clicks_on_and_opens_off() -> None:
    assert load_playbook(ROOT / "playbooks" / "lifecycle.yaml").playbook.tracking == Tracking(
        clicks=True, opens=False
    )


def test_tracking_is_read_from_the_playbook(tmp_path: Path) -> None:
    path = _playbook(tmp_path, "tracking:\n  clicks: false\n  opens: true")
    assert load_playbook(path).playbook.tracking == Tracking(clicks=False, opens=True)
    assert playbook_tracking([tmp_path]) == {"lifecycle": Tracking(clicks=False, opens=True)}


def test_an_unknown_tracking_key_names_file_line_and_the_known_keys(tmp_path: Path) -> None:
    path = _playbook(tmp_path, "tracking:\n  clicks: true\n  opnes: true")
    with pytest.raises(PlaybookError) as info:
        load_playbook(path)
    line = path.read_text().splitlines().index("  opnes: true") + 1
    assert [p.render().splitlines()[0] for p in info.value.problems] == [
        f"{path}:{line}:3: unknown field 'opnes' (did you mean 'opens'?)"
    ]


def test_a_tracking_value_that_is_no_boolean_is_an_error(tmp_path: Path) -> None:
    path = _playbook(tmp_path, "tracking:\n  clicks: sometimes")
    with pytest.raises(PlaybookError) as info:
        load_playbook(path)
    rendered = info.value.problems[0].render()
    assert "clicks" in rendered and f"{path}:" in rendered


def test_a_playbook_that_does_not_load_is_left_out_of_the_tracking_settings(tmp_path: Path) -> None:
    _playbook(tmp_path, "tracking:\n  clicks: maybe")
    assert playbook_tracking([tmp_path, tmp_path / "missing"]) == {}


def test_the_json_schema_knows_tracking() -> None:
    schema = playbook_schema()
    assert schema["properties"]["tracking"]["default"] == {"clicks": True, "opens": False}
    definition = schema["$defs"]["Tracking"]
    assert definition["additionalProperties"] is False
    assert set(definition["properties"]) == {"clicks", "opens"}
    assert (
        "unreliable" in definition["properties"]["opens"]["description"]
        or "proxies" in (definition["properties"]["opens"]["description"])
    )
