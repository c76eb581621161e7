"""Templates: the shipped ones render; escaping, strict variables, sandbox, SMS segments, dates."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from automation.db.tables import Customer
from automation.messages.context import CUSTOMER_FIELDS, build_context
from automation.messages.sms import sms_segments
from automation.messages.store import CHANNELS, RenderError, TemplateStore

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "templates"
NOW = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)

SHIPPED = {
    "email": ["birthday_reward", "getting_started", "tips_and_offers", "vip_welcome", "welcome"],
    "sms": ["feedback_survey"],
    "webhook": ["loyalty_points"],
    "task": ["check_in", "kickoff_meeting", "onboarding_call", "quarterly_review", "vip_thank_you_call"],
}


def sample_customer(**changes: Any) -> dict[str, Any]:
    customer: dict[str, Any] = {
        "id": "cus_001",
        "email": "ada@example.com",
        "phone": "+4915112345678",
        "first_name": "Ada",
        "last_name": "Lovelace",
        "timezone": "Europe/Berlin",
        "locale": "en-GB",
        "owner_email": "sam@example.com",
        "plan": "Pro",
        "clv": 1234.5,
        "orders_count": 7,
        "signed_up_at": datetime(2025, 11, 2, 9, 0, tzinfo=UTC),
        "last_order_at": datetime(2026, 3, 20, 18, 5, tzinfo=UTC),
        "last_seen_at": datetime(2026, 3, 28, 23, 30, tzinfo=UTC),
        "birthday": date(1990, 3, 29),
        "nps": 9,
        "attributes": {"favourite_colour": "green"},
    }
    customer.update(changes)
    return customer


def context(**changes: Any) -> dict[str, Any]:
    return build_context(
        sample_customer(**changes),
        playbook="lifecycle",
        segment="vip",
        touch="high",
        stage="active",
        step="welcome",
        now=NOW,
        unsubscribe_url="https://example.com/unsubscribe?c=cus_001&t=abc",
    )


@pytest.fixture
def store() -> TemplateStore:
    return TemplateStore(TEMPLATES)


@pytest.fixture
def make_store(tmp_path: Path) -> Callable[..., TemplateStore]:
    """A store over a temporary folder holding the given files (name -> source)."""

    def make(files: dict[str, str], **kwargs: Any) -> TemplateStore:
        for name, source in files.items():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text(source, encoding="utf-8")
        return TemplateStore(tmp_path, **kwargs)

    return make


# ------------------------------------------------------------------------------ shipped templates


def test_the_shipped_templates_are_the_expected_ones(store: TemplateStore) -> None:
    assert {channel: store.available(channel) for channel in CHANNELS} == SHIPPED


@pytest.mark.parametrize(
    ("name", "channel"), [(name, channel) for channel, names in SHIPPED.items() for name in names]
)
@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"first_name": None, "last_name": None, "plan": None, "clv": None, "orders_count": 0, "nps": None},
        {
            "last_order_at": None,
            "signed_up_at": None,
            "last_seen_at": None,
            "owner_email": None,
            "locale": None,
        },
    ],
    ids=["full", "sparse", "no-dates"],
)
def test_every_shipped_template_checks_and_renders(
    store: TemplateStore, name: str, channel: str, changes: dict[str, Any]
) -> None:
    assert store.check(name, channel) == []
    message = store.render(name, channel, context(**changes))
    assert message.channel == channel and message.template == name
    texts = (message.subject, message.text, message.html, message.body, message.title)
    assert "None" not in " ".join(t for t in texts if t)
    if channel == "email":
        assert message.subject and message.text and message.html
        assert "\n" not in message.subject
        assert "https://example.com/unsubscribe?c=cus_001&t=abc" in message.text
        assert 'href="https://example.com/unsubscribe?c=cus_001&amp;t=abc"' in message.html
        assert message.html.startswith("<!DOCTYPE html>")
        expected = "Ada" if changes.get("first_name", "Ada") else "there"
        assert f"Hi {expected}," in message.text or f"birthday, {expected}!" in message.text
    elif channel == "sms":
        assert message.body and "Reply STOP to opt out" in message.body
        assert message.encoding == "GSM-7" and message.segments == 1
    elif channel == "webhook":
        assert message.json["event"] == "loyalty_points"
        assert message.json["customer_id"] == "cus_001"
        assert message.json["email"] == "ada@example.com"
        assert message.json["stage"] == "active"
    else:
        assert message.title and message.body
        assert "Plan:" in message.body and "Lifetime value:" in message.body and "Orders:" in message.body


def test_loyalty_points_come_from_clv_or_from_orders(store: TemplateStore) -> None:
    by_clv = store.render("loyalty_points", "webhook", context(clv=1234.9, orders_count=7)).json
    assert by_clv["points"] == 1234 and by_clv["points_basis"] == "clv"
    by_orders = store.render("loyalty_points", "webhook", context(clv=None, orders_count=4)).json
    assert by_orders["points"] == 100 and by_orders["points_basis"] == "orders_count"


def test_task_mentions_the_account_context(store: TemplateStore) -> None:
    task = store.render("quarterly_review", "task", context())
    assert task.title == "Quarterly review with Ada Lovelace (Pro, CLV 1,234)"
    assert task.body is not None
    assert "- Lifetime value: 1,234.50" in task.body
    assert "- Orders: 7 (last on 2026-03-20)" in task.body
    assert "stage active, segment vip" in task.body


# ------------------------------------------------------------------------------- escaping, context


def test_html_block_is_escaped_but_subject_and_text_are_not(store: TemplateStore) -> None:
    message = store.render("welcome", "email", context(first_name="<b>x</b> & co"))
    assert message.html is not None and message.text is not None and message.subject is not None
    assert "Hi &lt;b&gt;x&lt;/b&gt; &amp; co," in message.html
    assert "<b>x</b>" not in message.html
    assert "Hi <b>x</b> & co," in message.text
    assert message.subject == "Welcome to Juniper, <b>x</b> & co!"
    assert "<title>Welcome to Juniper, &lt;b&gt;x&lt;/b&gt; &amp; co!</title>" in message.html


def test_sms_and_task_are_not_escaped(store: TemplateStore) -> None:
    sms = store.render("feedback_survey", "sms", context(first_name="Tom & Jerry"))
    assert sms.body is not None and sms.body.startswith("Hi Tom & Jerry,")
    task = store.render("check_in", "task", context(first_name="<Ann>"))
    assert task.title is not None and task.title.startswith("Check in with <Ann> Lovelace")


def test_build_context_fills_every_customer_column() -> None:
    ctx = build_context(
        {"id": "c1", "attributes": None},
        playbook="p",
        segment=None,
        touch=None,
        stage=None,
        step=None,
        now=NOW,
        unsubscribe_url="u",
    )
    assert set(CUSTOMER_FIELDS) == set(Customer.model_fields)
    assert set(ctx["customer"]) == set(CUSTOMER_FIELDS)
    assert ctx["customer"]["attributes"] == {} and ctx["customer"]["timezone"] == "UTC"
    assert set(ctx) == {"customer", "playbook", "segment", "touch", "stage", "step", "now", "unsubscribe_url"}


def test_attributes_and_fallback(make_store: Callable[..., TemplateStore]) -> None:
    store = make_store(
        {
            "a.sms.j2": "{{ customer.attributes.favourite_colour }} "
            "{{ customer.attributes.missing|fallback('none') }} "
            "{{ customer.first_name|fallback('there') }} {{ customer.plan }}|{{ customer.nps|fallback('x') }}"
        }
    )
    assert store.render("a", "sms", context(first_name="  ", plan=None, nps=0)).body == "green none there |0"


def test_undefined_variable_names_file_and_line(make_store: Callable[..., TemplateStore]) -> None:
    store = make_store({"t.sms.j2": "Hello\n{% if true %}\n{{ customer.nope }}\n{% endif %}\n"})
    with pytest.raises(RenderError) as info:
        store.render("t", "sms", context())
    error = info.value
    assert error.path == store.templates_dir / "t.sms.j2" and error.line == 3
    assert f"{store.templates_dir / 't.sms.j2'}:3:" in str(error)
    assert "nope" in str(error) and "{{ customer.nope }}" in str(error) and "fallback" in str(error)


def test_undefined_variable_in_email_block_names_the_line(make_store: Callable[..., TemplateStore]) -> None:
    store = make_store(
        {
            "layout.email.j2": "{% block text %}{% block text_body %}{% endblock %}\n{{ unsubscribe_url }}"
            "{% endblock %}{% block html %}<p>{% block html_body %}{% endblock %}</p>{% endblock %}",
            "m.email.j2": '{% extends "layout.email.j2" %}\n{% block subject %}Hi{% endblock %}\n'
            "{% block text_body %}ok{% endblock %}\n{% block html_body %}\n\n{{ nothing }}{% endblock %}\n",
        }
    )
    assert store.check("m", "email") == []
    with pytest.raises(RenderError) as info:
        store.render("m", "email", context())
    assert info.value.path.name == "m.email.j2" and info.value.line == 6


def test_error_in_the_layout_names_the_layout(make_store: Callable[..., TemplateStore]) -> None:
    store = make_store(
        {
            "layout.email.j2": "{% block text %}x{% endblock %}\n"
            "{% block html %}\n{{ footer_text }}{% endblock %}",
            "m.email.j2": '{% extends "layout.email.j2" %}{% block subject %}Hi{% endblock %}',
        }
    )
    with pytest.raises(RenderError) as info:
        store.render("m", "email", context())
    assert info.value.path.name == "layout.email.j2" and info.value.line == 3


# ------------------------------------------------------------------------------------------ check


def test_syntax_error_is_a_problem_with_file_and_line(make_store: Callable[..., TemplateStore]) -> None:
    store = make_store(
        {"broken.task.j2": "{% block title %}Hi{% endblock %}\n{% block body %}\n{% if x %}\n"}
    )
    [problem] = store.check("broken", "task")
    assert problem.path == store.templates_dir / "broken.task.j2"
    assert problem.line == 3
    assert "syntax error" in problem.message
    assert problem.render().startswith(f"{store.templates_dir / 'broken.task.j2'}:3: syntax error")
    with pytest.raises(RenderError) as info:
        store.render("broken", "task", context())
    assert info.value.line == 3


def test_syntax_error_in_the_layout_is_reported_at_the_layout(
    make_store: Callable[..., TemplateStore],
) -> None:
    store = make_store(
        {
            "layout.email.j2": "{% block text %}{% endblock %}\n{% block html %}{{ x | }}{% endblock %}",
            "m.email.j2": '{% extends "layout.email.j2" %}{% block subject %}Hi{% endblock %}',
        }
    )
    [problem] = store.check("m", "email")
    assert Path(problem.path).name == "layout.email.j2" and problem.line == 2


def test_missing_template_lists_the_existing_ones(store: TemplateStore) -> None:
    [problem] = store.check("welcom", "email")
    assert problem.path == TEMPLATES / "welcom.email.j2"
    assert "not found" in problem.message
    assert "did you mean 'welcome'?" in problem.message
    for name in SHIPPED["email"]:
        assert name in problem.message
    assert "layout" not in problem.message
    with pytest.raises(RenderError, match=r"welcom\.email\.j2"):
        store.render("welcom", "email", context())


def test_missing_template_when_the_channel_has_none(make_store: Callable[..., TemplateStore]) -> None:
    store = make_store({"a.sms.j2": "hi"})
    [problem] = store.check("a", "task")
    assert "there are no task templates" in problem.message


def test_missing_blocks_and_missing_layout(make_store: Callable[..., TemplateStore]) -> None:
    store = make_store(
        {
            "plain.email.j2": "{% block subject %}Hi{% endblock %}{% block text %}x{% endblock %}",
            "orphan.email.j2": '\n{% extends "nolayout.email.j2" %}',
            "t.task.j2": "{% block title %}T{% endblock %}",
        }
    )
    [problem] = store.check("plain", "email")
    assert "html" in problem.message and "block" in problem.message
    [problem] = store.check("t", "task")
    assert "body" in problem.message
    [problem] = store.check("orphan", "email")
    assert problem.line == 2 and "'nolayout.email.j2' not found" in problem.message
    with pytest.raises(RenderError, match=r"nolayout\.email\.j2"):
        store.render("orphan", "email", context())


def test_bad_names_and_channels_are_refused(store: TemplateStore) -> None:
    assert "unknown channel" in store.check("welcome", "fax")[0].message
    assert "invalid template name" in store.check("../etc/passwd", "email")[0].message
    with pytest.raises(RenderError):
        store.path_for("/abs", "sms")
    assert store.path_for("sub/name", "sms") == TEMPLATES / "sub" / "name.sms.j2"


# ---------------------------------------------------------------------------------------- webhook


def test_webhook_with_invalid_json_is_an_error(make_store: Callable[..., TemplateStore]) -> None:
    store = make_store({"hook.webhook.j2": '{\n  "email": {{ customer.email }}\n}\n'})
    with pytest.raises(RenderError) as info:
        store.render("hook", "webhook", context())
    assert info.value.path.name == "hook.webhook.j2"
    assert "not valid JSON" in str(info.value) and "tojson" in str(info.value)


def test_webhook_tojson_handles_dates_and_quotes(make_store: Callable[..., TemplateStore]) -> None:
    store = make_store(
        {"hook.webhook.j2": '{"name": {{ customer.first_name|tojson }}, "at": {{ now|tojson }}}'}
    )
    message = store.render("hook", "webhook", context(first_name='Ada "the" <Countess>'))
    assert message.json == {"name": 'Ada "the" <Countess>', "at": "2026-03-29T01:30:00+00:00"}


# -------------------------------------------------------------------------------------------- SMS


@pytest.mark.parametrize(
    ("text", "encoding", "segments"),
    [
        ("", "GSM-7", 0),
        ("a" * 160, "GSM-7", 1),
        ("a" * 161, "GSM-7", 2),
        ("a" * 306, "GSM-7", 2),
        ("a" * 307, "GSM-7", 3),
        ("€" * 80, "GSM-7", 1),  # 160 septets
        ("€" * 81, "GSM-7", 2),  # 162 septets; 76 per part (an escape pair is never split)
        ("{" + "a" * 159, "GSM-7", 2),  # { counts twice: 161 septets
        ("Hello @ £5 ÄÖÑÜ ñ à", "GSM-7", 1),
        ("Hi 😀", "UCS-2", 1),
        ("ж" * 70, "UCS-2", 1),
        ("ж" * 71, "UCS-2", 2),
        ("ж" * 134, "UCS-2", 2),
        ("ж" * 135, "UCS-2", 3),
        ("😀" * 35, "UCS-2", 1),  # 70 UTF-16 code units
        ("😀" * 36, "UCS-2", 2),
        ("It’s here", "UCS-2", 1),  # a curly apostrophe is not GSM-7
        ("François", "UCS-2", 1),  # GSM-7 has Ç but not ç
    ],
)
def test_sms_segments(text: str, encoding: str, segments: int) -> None:
    assert sms_segments(text) == (encoding, segments)


def test_rendered_sms_reports_encoding_and_segments(make_store: Callable[..., TemplateStore]) -> None:
    store = make_store({"s.sms.j2": "Hi {{ customer.first_name }} {{ '😀' if customer.plan else '' }}\n"})
    gsm = store.render("s", "sms", context(plan=None))
    assert (gsm.body, gsm.encoding, gsm.segments) == ("Hi Ada", "GSM-7", 1)
    ucs = store.render("s", "sms", context())
    assert (ucs.encoding, ucs.segments) == ("UCS-2", 1)


def test_sms_over_the_maximum_is_refused(make_store: Callable[..., TemplateStore]) -> None:
    store = make_store(
        {"long.sms.j2": "{{ 'a' * customer.orders_count }}", "emoji.sms.j2": "😀{{ 'a' * 150 }}"}
    )
    assert store.render("long", "sms", context(orders_count=459)).segments == 3
    with pytest.raises(
        RenderError, match=r"4 segments \(GSM-7, 460 characters\), more than the maximum of 3"
    ):
        store.render("long", "sms", context(orders_count=460))
    with pytest.raises(RenderError, match=r"UCS-2.*because of '😀'"):
        make_store({}, max_sms_segments=2).render("emoji", "sms", context())
    assert make_store({}, max_sms_segments=4).render("long", "sms", context(orders_count=600)).segments == 4


def test_empty_sms_is_refused(make_store: Callable[..., TemplateStore]) -> None:
    store = make_store({"e.sms.j2": "{% if false %}x{% endif %}\n"})
    with pytest.raises(RenderError, match="empty"):
        store.render("e", "sms", context())


# ---------------------------------------------------------------------------------------- sandbox


@pytest.mark.parametrize(
    "expression",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ customer|attr('__class__') }}",
        "{{ '{0.__class__}'.format(customer) }}",
        "{{ '{0.__class__.__init__.__globals__}'.format(cycler) }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ lipsum.__globals__ }}",
        "{{ self.__init__.__globals__ }}",
        "{{ customer._sa_instance_state }}",
        "{{ customer.attributes.update({'x': 1}) }}",
        "{{ customer.attributes.clear() }}",
        "{{ 'a' * 100000000 }}",
        "{{ 9 ** 99999999 }}",
        "{{ range(10000000) | list }}",
    ],
)
def test_sandbox_escapes_fail(make_store: Callable[..., TemplateStore], expression: str) -> None:
    store = make_store({"evil.sms.j2": f"Hi\n{expression}\n"})
    ctx = context()
    with pytest.raises(RenderError) as info:
        store.render("evil", "sms", ctx)
    assert info.value.path.name == "evil.sms.j2" and info.value.line == 2
    assert ctx["customer"]["attributes"] == {"favourite_colour": "green"}


# ------------------------------------------------------------------------------------------ dates


def dates_store(make_store: Callable[..., TemplateStore], source: str) -> TemplateStore:
    return make_store({"d.sms.j2": source})


def test_date_filters_use_the_customer_time_zone(make_store: Callable[..., TemplateStore]) -> None:
    store = dates_store(make_store, "{{ now|date }} | {{ now|datetime }} | {{ now|datetime('long') }}")
    # 01:30 UTC on 29 March 2026 is 03:30 summer time in Berlin (clocks went forward at 01:00 UTC)
    berlin = store.render("d", "sms", context(timezone="Europe/Berlin", locale="en-GB"))
    assert berlin.body == "29 Mar 2026 | 29 Mar 2026, 03:30 | 29 March 2026, 03:30 CEST"
    # ... and 21:30 the day before in New York
    new_york = store.render("d", "sms", context(timezone="America/New_York", locale="en-US"))
    assert new_york.body == "Mar 28, 2026 | Mar 28, 2026, 9:30 PM | March 28, 2026, 9:30 PM EDT"


def test_date_filter_day_changes_at_local_midnight(make_store: Callable[..., TemplateStore]) -> None:
    store = dates_store(
        make_store, "{{ customer.last_seen_at|date('iso') }} {{ customer.last_seen_at|date }}"
    )
    # 23:30 UTC on the 28th is 00:30 on the 29th in Berlin (still winter time then)
    assert store.render("d", "sms", context(timezone="Europe/Berlin")).body == "2026-03-29 29 Mar 2026"
    assert store.render("d", "sms", context(timezone="UTC")).body == "2026-03-28 28 Mar 2026"


@pytest.mark.parametrize(
    ("locale", "expected"),
    [
        (None, "3/29/26 | Mar 29, 2026 | March 29, 2026 | Sunday, March 29, 2026"),
        ("en_US", "3/29/26 | Mar 29, 2026 | March 29, 2026 | Sunday, March 29, 2026"),
        ("en-AU", "29/03/2026 | 29 Mar 2026 | 29 March 2026 | Sunday, 29 March 2026"),
        ("de-DE", "29.03.26 | 29.03.2026 | 29. März 2026 | Sonntag, 29. März 2026"),
        ("fr", "29/03/2026 | 29 mars 2026 | 29 mars 2026 | dimanche 29 mars 2026"),
        ("es-MX", "29/3/26 | 29 mar 2026 | 29 de marzo de 2026 | domingo, 29 de marzo de 2026"),
        ("ja-JP", "3/29/26 | Mar 29, 2026 | March 29, 2026 | Sunday, March 29, 2026"),
    ],
)
def test_date_formats_per_locale(
    make_store: Callable[..., TemplateStore], locale: str | None, expected: str
) -> None:
    store = dates_store(
        make_store,
        "{{ now|date('short') }} | {{ now|date }} | {{ now|date('long') }} | {{ now|date('full') }}",
    )
    assert store.render("d", "sms", context(timezone="Europe/Berlin", locale=locale)).body == expected


def test_date_filter_inputs_and_options(make_store: Callable[..., TemplateStore]) -> None:
    store = dates_store(
        make_store,
        "{{ customer.birthday|date('long') }}|{{ '2026-03-29'|date }}|{{ '2026-03-28T23:30:00Z'|date }}|"
        "{{ customer.last_order_at|date }}|{{ now|date('%d/%m %H:%M') }}|{{ now|datetime(tz='Asia/Tokyo') }}|"
        "{{ now|date(locale='de') }}|{{ now|datetime('iso') }}",
    )
    body = store.render(
        "d", "sms", context(timezone="America/Los_Angeles", locale="en-US", last_order_at=None)
    ).body
    assert body == (
        "March 29, 1990|Mar 29, 2026|Mar 28, 2026||28/03 18:30|Mar 29, 2026, 10:30 AM|"
        "28.03.2026|2026-03-28T18:30:00-07:00"
    )


def test_naive_datetimes_are_utc_and_unknown_zones_fall_back_to_utc(
    make_store: Callable[..., TemplateStore],
) -> None:
    store = dates_store(make_store, "{{ customer.last_seen_at|datetime }}")
    naive = context(timezone="Europe/Berlin", last_seen_at=datetime(2026, 1, 1, 12, 0), locale="en-GB")
    assert store.render("d", "sms", naive).body == "1 Jan 2026, 13:00"
    assert (
        store.render("d", "sms", context(timezone="Mars/Olympus", locale="en-GB")).body
        == "28 Mar 2026, 23:30"
    )


def test_date_filter_errors_name_the_line(make_store: Callable[..., TemplateStore]) -> None:
    store = make_store({"bad.sms.j2": "ok\n{{ now|date('fancy') }}", "worse.sms.j2": "{{ 'soon'|date }}"})
    with pytest.raises(RenderError, match=r"bad.sms.j2:2: .*unknown date format 'fancy'"):
        store.render("bad", "sms", context())
    with pytest.raises(RenderError, match="expects a date"):
        store.render("worse", "sms", context())


def test_number_filter(make_store: Callable[..., TemplateStore]) -> None:
    store = make_store(
        {"n.sms.j2": "{{ customer.clv|number(2) }}|{{ customer.clv|number }}|{{ none|number }}"}
    )
    assert store.render("n", "sms", context(clv=12345.678, locale="en-US")).body == "12,345.68|12,346|"
    assert store.render("n", "sms", context(clv=12345.678, locale="de")).body == "12.345,68|12.346|"


def test_top_level_variables_of_a_child_reach_the_layout(make_store: Callable[..., TemplateStore]) -> None:
    store = make_store(
        {
            "layout.email.j2": "{% block text %}[{{ tone }}] "
            "{% block text_body %}{% endblock %}{% endblock %}"
            "{% block html %}<i>{{ tone }}</i>{% block html_body %}{% endblock %}{% endblock %}",
            "m.email.j2": '{% extends "layout.email.j2" %}{% set tone = "<warm>" %}'
            "{% block subject %}S{% endblock %}{% block text_body %}t{% endblock %}"
            "{% block html_body %}h{% endblock %}",
        }
    )
    message = store.render("m", "email", context())
    assert (message.subject, message.text, message.html) == ("S", "[<warm>] t", "<i>&lt;warm&gt;</i>h")


# ------------------------------------------------------------------ filters kept identical to Jinja's

TOJSON_VALUES: list[Any] = [
    "plain",
    'quotes " and \\ backslash',
    "<script>alert('x') & more</script>",
    "ünïcödé ✓ and emoji 🎉",
    "control \n\t\x01",
    0,
    -42,
    2**70,
    1.5,
    420.0,
    1e-7,
    float("nan"),
    float("inf"),
    float("-inf"),
    True,
    False,
    None,
    date(2026, 3, 29),
    datetime(2026, 3, 29, 1, 30, tzinfo=UTC),
    datetime(2026, 3, 29, 1, 30, 5, 123456),
    {"nested": [1, "<b>", None, date(2026, 1, 2)], "k'ey": {"x": 1.25}},
    [],
    ("a", 1),
]


@pytest.mark.parametrize("value", TOJSON_VALUES, ids=lambda v: type(v).__name__)
def test_tojson_writes_exactly_what_jinjas_filter_writes(
    make_store: Callable[..., TemplateStore], value: Any
) -> None:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from automation.messages.filters import _json_default

    reference = ImmutableSandboxedEnvironment()
    reference.policies["json.dumps_kwargs"] = {"default": _json_default, "ensure_ascii": False}
    expected = reference.from_string("{{ value|tojson }}|{{ value|tojson(2) }}").render(value=value)
    store = make_store({"t.webhook.j2": '{"a": {{ value|tojson }}, "b": {{ value|tojson(2) }}}'})
    got = store._env.from_string("{{ value|tojson }}|{{ value|tojson(2) }}").render(value=value)
    assert got == expected


def test_tojson_writes_each_time_its_own_text_when_times_alternate(
    make_store: Callable[..., TemplateStore],
) -> None:
    """``|tojson`` remembers the last date or datetime it wrote: the same object again, or another one
    equal to it in another zone or of the other type, is still written as itself."""
    from datetime import timedelta, timezone

    from markupsafe import Markup

    store = make_store({"t.webhook.j2": "{}"})
    template = store._env.from_string("{{ a|tojson }} {{ a|tojson }} {{ b|tojson }} {{ a|tojson }}")
    other_zone = NOW.astimezone(timezone(timedelta(hours=2)))
    for a, b in [(NOW, other_zone), (date(2026, 3, 29), NOW), (NOW, NOW.replace(tzinfo=None))]:
        expected = " ".join(f'"{v.isoformat()}"' for v in (a, a, b, a))
        assert template.render(a=a, b=b) == expected
    value = store._env.filters["tojson"](store._env.from_string("").new_context().eval_ctx, "<b>")
    assert type(value) is Markup and value == '"\\u003cb\\u003e"'


@pytest.mark.parametrize(
    "value",
    [[3, 1, 2], (1.5, 2, -1), [0, 0.0], [True, 0], ["b", "A", "c"], [1, "a"], [], [[1], [2]], [-0.0, 0]],
    ids=repr,
)
@pytest.mark.parametrize("name", ["min", "max"])
def test_min_and_max_agree_with_jinja(
    make_store: Callable[..., TemplateStore], value: Any, name: str
) -> None:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    reference = ImmutableSandboxedEnvironment(undefined=StrictUndefined)
    source = f"{{{{ (value|{name}) is defined }}}} {{{{ value|{name}|default('none') }}}}"
    source += f" {{{{ value|{name}(case_sensitive=true)|default('none') }}}}"
    store = make_store({})
    try:
        expected: str | type[Exception] = reference.from_string(source).render(value=value)
    except Exception as exc:
        expected = type(exc)
    try:
        got: str | type[Exception] = store._env.from_string(source).render(value=value)
    except Exception as exc:
        got = type(exc)
    assert got == expected


def test_a_found_template_renders_from_memory_after_its_file_is_gone(
    make_store: Callable[..., TemplateStore], tmp_path: Path
) -> None:
    store = make_store({"ping.webhook.j2": '{"id": {{ customer.id|tojson }}}'})
    assert store.render("ping", "webhook", context()).json == {"id": "cus_001"}
    (tmp_path / "ping.webhook.j2").unlink()
    assert store.render("ping", "webhook", context()).json == {"id": "cus_001"}
    with pytest.raises(RenderError, match="template file not found"):
        make_store({}).render("ping", "webhook", context())


def test_reads_follows_extends_and_includes(make_store: Callable[..., TemplateStore]) -> None:
    store = make_store(
        {
            "plain.webhook.j2": '{"id": {{ customer.id|tojson }}}',
            "local.webhook.j2": '{% set unsubscribe_url = "x" %}{"u": {{ unsubscribe_url|tojson }}}',
            "direct.webhook.j2": '{"u": {{ unsubscribe_url|tojson }}}',
            "_part.j2": "{{ unsubscribe_url }}",
            "included.sms.j2": "Hi {% include '_part.j2' %}",
            "base.task.j2": (
                "{% block title %}t{% endblock %}{% block body %}{{ unsubscribe_url }}{% endblock %}"
            ),
            "child.task.j2": '{% extends "base.task.j2" %}{% block title %}child{% endblock %}',
            "dynamic.sms.j2": "{% include customer.plan %}",
            "broken.sms.j2": "{% if %}",
        }
    )
    assert not store.reads("plain", "webhook", "unsubscribe_url")
    assert store.reads("plain", "webhook", "customer")
    assert not store.reads("local", "webhook", "unsubscribe_url")
    assert store.reads("direct", "webhook", "unsubscribe_url")
    assert store.reads("included", "sms", "unsubscribe_url")
    assert store.reads("child", "task", "unsubscribe_url")
    assert store.reads("dynamic", "sms", "unsubscribe_url")  # computed name: anything may be read
    assert store.reads("broken", "sms", "unsubscribe_url")
    assert store.reads("missing", "sms", "unsubscribe_url")


def test_the_shipped_webhook_does_not_print_the_unsubscribe_link_and_the_emails_do(
    store: TemplateStore,
) -> None:
    assert not store.reads("loyalty_points", "webhook", "unsubscribe_url")
    assert all(store.reads(name, "email", "unsubscribe_url") for name in SHIPPED["email"])
