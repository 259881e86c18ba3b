"""``hexbus asyncapi``: the document says what really travels, where, and never a secret.

Why the checks go through the adapters' own code: an address, a header name or an
example is only right if it is what the RabbitMQ and Kafka adapters really use, so
each claim of the document is compared with the adapters' naming functions and
marshals (the document's builder may not import them; these tests may), and every
example is decoded by the real CloudEvents codec into its event class.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from hexbus.application.handlers import SubscriptionTable
from hexbus.cli import app
from hexbus.demo.events import UserCreated
from hexbus.domain.errors import ConfigurationError
from hexbus.domain.events import DomainEvent, event_registry
from hexbus.infrastructure import names
from hexbus.infrastructure.asyncapi import address_problems, asyncapi_document, render
from hexbus.infrastructure.codec import ENVELOPE_FIELDS, CloudEventCodec
from hexbus.infrastructure.kafka import marshal as kafka_marshal
from hexbus.infrastructure.kafka import topology as kafka_topology
from hexbus.infrastructure.rabbitmq import marshal as amqp_marshal
from hexbus.infrastructure.rabbitmq import topology as amqp_topology
from hexbus.infrastructure.settings import load_settings

runner = CliRunner()
APPS = Path(__file__).parent
SHOP = "asyncapi_apps.shop:ShopContainer"
DEMO = "hexbus.demo:DemoContainer"
SECRET = "s3cr3t-pw"
ENV = {
    "HEXBUS_APP": "",
    "HEXBUS_ADAPTER": "memory",
    "HEXBUS_SERVICE_NAME": "shop",
    "HEXBUS_RABBITMQ_URL": f"amqp://shopper:{SECRET}@rabbit.internal:5673/sales",
    "HEXBUS_RABBITMQ_EXCHANGE": "shop.events",
    "HEXBUS_KAFKA_BOOTSTRAP_SERVERS": "k1.internal:9092, k2.internal:9093",
    "HEXBUS_KAFKA_TOPIC_PREFIX": "prod.",
    "HEXBUS_KAFKA_PARTITIONS": "6",
    "HEXBUS_KAFKA_REPLICATION_FACTOR": "3",
}


@pytest.fixture(autouse=True)
def _apps_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """``asyncapi_apps`` is a package next to this file (``tests`` itself is no package)."""
    monkeypatch.syspath_prepend(str(APPS))


def _shop() -> Any:
    import asyncapi_apps.shop as shop  # noqa: PLC0415 - importable once the fixture ran

    return shop


def generate(*args: str, env: dict[str, str] | None = None) -> str:
    result = runner.invoke(app, ["asyncapi", *args], env={**ENV, **(env or {})})
    assert result.exit_code == 0, result.output
    return result.stdout


def document(adapter: str, path: str = SHOP, **env: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(generate("--app", path, "--adapter", adapter, env=env))
    return doc


def _event_class(doc: dict[str, Any], message_key: str) -> type[DomainEvent]:
    return event_registry.get(doc["components"]["messages"][message_key]["name"])


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for token in ref.removeprefix("#/").split("/"):
        node = node[token.replace("~1", "/").replace("~0", "~")]
    return node


# -- structure -----------------------------------------------------------------------
@pytest.mark.parametrize("adapter", ["memory", "rabbitmq", "kafka"])
def test_every_reference_resolves_and_operations_use_their_channels_messages(
    adapter: str,
) -> None:
    doc = document(adapter)

    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["title"] == "shop events"
    assert doc["id"] == "urn:hexbus:shop"
    assert address_problems(doc) == []
    refs: list[str] = []

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(doc)
    assert refs
    for ref in refs:
        _resolve(doc, ref)  # KeyError if dangling
    for op_id, operation in doc["operations"].items():
        channel_ref = operation["channel"]["$ref"]
        for message in operation.get("messages", []):
            assert message["$ref"].startswith(channel_ref + "/messages/"), op_id


def test_send_operations_are_the_events_the_app_defines_receive_its_subscriptions() -> None:
    doc = document("kafka")
    ops = doc["operations"]

    sends = {
        op["messages"][0]["$ref"].rsplit("/", 1)[-1]
        for op in ops.values()
        if op["action"] == "send"
    }
    assert sends == {"OrderPaid", "OrderPlaced", "ParcelShipped", "StockLow"}
    # user.created is another service's event: received (by class), never sent.
    assert "send:user.created" not in ops
    assert "UserCreated" in doc["components"]["messages"]
    welcome = ops["receive:asyncapitest.welcome:prod.user.created"]
    assert welcome["action"] == "receive"
    assert welcome["x-hexbus-subscription"]["handlers"] == ["asyncapi_apps.shop.welcome"]
    receives = {
        op["x-hexbus-subscription"]["name"] for op in ops.values() if op["action"] == "receive"
    }
    assert receives == {
        "asyncapitest.billing",
        "asyncapitest.audit",
        "asyncapitest.welcome",
        "asyncapi_apps.shop.Warehouse",
    }


def test_a_pattern_that_matches_no_event_is_named_not_dropped_silently() -> None:
    rabbit = document("rabbitmq")
    kafka = document("kafka")

    for doc in (rabbit, kafka):
        assert "asyncapitest.returns (asyncapitest.returns.#)" in doc["info"]["description"]
    # On RabbitMQ the queue exists all the same (bound with the pattern), with no message yet.
    queue = rabbit["channels"]["queue:shop.asyncapitest.returns"]
    assert queue["messages"] == {}
    assert queue["bindings"]["amqp"]["x-binding-keys"] == ["asyncapitest.returns.#"]
    assert not any(k.startswith("receive:asyncapitest.returns") for k in kafka["operations"])


# -- addresses: what the adapters really use -------------------------------------------
def test_rabbitmq_channels_are_the_exchanges_routing_keys_and_the_subscription_queues() -> None:
    doc = document("rabbitmq")
    shop = _shop()
    table = SubscriptionTable()
    for target, handler, name in shop.router:
        table.add(target, handler, name)

    server = doc["servers"]["rabbitmq"]
    assert server == {
        "host": "rabbit.internal:5673",
        "protocol": "amqp",
        "title": "RabbitMQ",
        "description": server["description"],
        "pathname": "/sales",
        "security": [{"$ref": "#/components/securitySchemes/rabbitmqUser"}],
    }
    for cls in (shop.OrderPlaced, shop.OrderPaid, shop.ParcelShipped, shop.StockLow, UserCreated):
        channel = doc["channels"][cls.event_type]
        assert channel["address"] == cls.event_type  # the routing key
        assert channel["bindings"]["amqp"]["is"] == "routingKey"
        assert channel["bindings"]["amqp"]["exchange"] == {
            "name": "shop.events",
            "type": "topic",
            "durable": True,
            "autoDelete": False,
            "vhost": "sales",
        }
    queues = {
        c["address"]: c for c in doc["channels"].values() if c["bindings"]["amqp"]["is"] == "queue"
    }
    expected = {amqp_topology.work_queue_name("shop", name) for name in table.names()}
    expected.add(amqp_topology.work_queue_name("shop", "asyncapi_apps.shop.Warehouse"))
    assert set(queues) == expected
    audit = queues[amqp_topology.work_queue_name("shop", "asyncapitest.audit")]
    assert set(audit["messages"]) == {"OrderPaid", "OrderPlaced"}
    assert audit["bindings"]["amqp"]["queue"]["name"] == "shop.asyncapitest.audit"
    assert audit["bindings"]["amqp"]["queue"]["durable"] is True
    op = doc["operations"]["receive:asyncapitest.audit"]
    assert op["channel"] == {"$ref": "#/channels/queue:shop.asyncapitest.audit"}
    assert op["bindings"]["amqp"]["ack"] is True
    send = doc["operations"]["send:asyncapitest.stock.low"]
    assert send["bindings"]["amqp"]["deliveryMode"] == 2  # persistent, as published


def test_kafka_channels_are_the_real_topics_and_groups() -> None:
    doc = document("kafka")
    shop = _shop()

    assert doc["servers"] == {
        "kafka-1": {**doc["servers"]["kafka-1"], "host": "k1.internal:9092", "protocol": "kafka"},
        "kafka-2": {**doc["servers"]["kafka-2"], "host": "k2.internal:9093", "protocol": "kafka"},
    }
    topics = {c["address"]: c for c in doc["channels"].values()}
    expected = {
        kafka_topology.event_topic("prod.", cls)
        for cls in (
            shop.OrderPlaced,
            shop.OrderPaid,
            shop.ParcelShipped,
            shop.StockLow,
            UserCreated,
        )
    }
    assert set(topics) == expected
    assert set(doc["channels"]) == expected  # channel ids are the topics too
    shared = topics["prod.asyncapitest.orders"]  # kafka_topic: one topic, two types
    assert set(shared["messages"]) == {"OrderPaid", "OrderPlaced"}
    assert "ce_type" in shared["description"]
    assert shared["bindings"]["kafka"] == {
        "partitions": 6,
        "replicas": 3,
        "bindingVersion": "0.5.0",
    }
    op = doc["operations"]["receive:asyncapitest.billing:prod.asyncapitest.orders"]
    group = kafka_topology.group_id("shop", "asyncapitest.billing")
    assert op["bindings"]["kafka"]["groupId"] == {"type": "string", "enum": [group]}
    # The billing group reads the shared topic but handles only order.placed there.
    assert [m["$ref"].rsplit("/", 1)[-1] for m in op["messages"]] == ["OrderPlaced"]
    warehouse = [k for k in doc["operations"] if k.startswith("receive:asyncapi_apps.shop.Ware")]
    assert sorted(warehouse) == [
        "receive:asyncapi_apps.shop.Warehouse:prod.asyncapitest.orders",
        "receive:asyncapi_apps.shop.Warehouse:prod.asyncapitest.stock.low",
    ]


def test_memory_documents_event_types_without_servers_or_bindings() -> None:
    doc = document("memory")

    assert "servers" not in doc
    assert "--adapter rabbitmq|kafka" in doc["info"]["description"]
    assert doc["channels"]["asyncapitest.order.placed"]["address"] == "asyncapitest.order.placed"
    assert all("bindings" not in c for c in doc["channels"].values())


def test_the_configured_adapter_is_the_default() -> None:
    doc = json.loads(generate("--app", SHOP, env={"HEXBUS_ADAPTER": "kafka"}))

    assert doc["servers"]["kafka-1"]["protocol"] == "kafka"
    assert "prod.asyncapitest.orders" in doc["channels"]


def test_the_naming_functions_are_the_adapters_own() -> None:
    """The neutral names module is what the adapters use (no second copy to drift)."""
    assert kafka_topology.event_topic is names.event_topic
    assert kafka_topology.group_id is names.group_id
    assert amqp_topology.work_queue_name("svc", "sub") == names.work_queue_name("svc", "sub")
    assert names.KAFKA_HEADER_PREFIX == kafka_marshal.KAFKA_PREFIX
    assert names.KAFKA_CONTENT_TYPE_HEADER == kafka_marshal.KAFKA_CONTENT_TYPE_HEADER
    assert names.AMQP_HEADER_PREFIX == amqp_marshal.AMQP_PREFIX


# -- messages ------------------------------------------------------------------------
def _wire_headers(adapter: str, event: DomainEvent, metadata: dict[str, str]) -> dict[str, Any]:
    codec = CloudEventCodec(source="shop")
    if adapter == "kafka":
        headers, _ = kafka_marshal.encode_record(codec, event, metadata)
        return {name: value.decode() for name, value in headers}
    amqp_headers, _content_type, _ = amqp_marshal.encode_message(codec, event, metadata)
    return dict(amqp_headers)


@pytest.mark.parametrize("adapter", ["rabbitmq", "kafka"])
def test_headers_are_the_cloudevents_binding_the_adapter_writes(adapter: str) -> None:
    doc = document(adapter)
    shop = _shop()
    message = doc["components"]["messages"]["StockLow"]
    schema = message["headers"]
    # A reply (causation, the parent's conversation) with metadata: every optional
    # attribute is on the wire.
    parent = shop.StockLow(sku="ABC-0001", left=0)
    event = shop.StockLow(
        sku="ABC-0001",
        left=1,
        causation_id=str(parent.event_id),
        correlation_id=parent.correlation_id,
    )
    wire = _wire_headers(adapter, event, {"ip_address": "10.0.0.1"})

    assert set(schema["required"]) <= set(wire)
    for name, value in wire.items():
        if name in schema["properties"]:
            prop = schema["properties"][name]
            assert prop.get("const", value) == value, name
        else:  # metadata: an extension
            assert name.removeprefix("ce_").removeprefix("cloudEvents:") == "ipaddress"
    assert {name for name in wire if name in schema["properties"]} >= set(schema["required"])
    correlation = message["correlationId"]["location"].removeprefix("$message.header#/")
    assert wire[correlation] == event.correlation_id
    assert message["contentType"] == "application/json"
    if adapter == "kafka":
        assert wire["content-type"] == "application/json"
        assert message["bindings"]["kafka"]["key"]["type"] == "string"
    else:  # AMQP: the content type is a message property, not a header
        assert not any("datacontenttype" in name for name in schema["properties"])
        assert message["bindings"]["amqp"]["messageType"] == "asyncapitest.stock.low"


@pytest.mark.parametrize("adapter", ["memory", "rabbitmq", "kafka"])
def test_every_example_decodes_into_its_event_class(adapter: str) -> None:
    """Headers + payload of each example, through the real codec, give the event back."""
    doc = document(adapter)
    codec = CloudEventCodec(source="elsewhere")
    decoded = 0
    for key, message in doc["components"]["messages"].items():
        cls = _event_class(doc, key)
        assert message["examples"], f"{key} has no example"
        for example in message["examples"]:
            body = json.dumps(example["payload"]).encode()
            headers = example["headers"]
            if adapter == "kafka":
                record = [(k, v.encode()) for k, v in headers.items()]
                event, _ = kafka_marshal.decode_record(codec, record, body)
            elif adapter == "rabbitmq":
                event, _ = amqp_marshal.decode_message(codec, headers, "application/json", body)
            else:
                event, _ = codec.decode(headers, body)
            assert type(event) is cls
            assert {k: v for k, v in event.to_dict().items() if k not in ENVELOPE_FIELDS} == (
                example["payload"]
            )
            decoded += 1
    assert decoded >= 5


def test_examples_use_what_the_author_wrote() -> None:
    doc = document("kafka")
    parcel = doc["components"]["messages"]["ParcelShipped"]["examples"][0]["payload"]
    placed = doc["components"]["messages"]["OrderPlaced"]["examples"][0]["payload"]

    assert parcel["tracking_code"] == "RR123456785DE"  # the model's own example
    assert parcel["weights_grams"] == {"box-1": 1200}
    assert placed["lines"][0]["sku"] == "AAA-0000"  # made up from the pattern
    assert placed["customer_email"] == "user@example.com"


def test_payload_schema_is_the_events_own_fields_as_draft07() -> None:
    doc = document("kafka")
    schemas = doc["components"]["schemas"]
    placed, paid = schemas["OrderPlaced"], schemas["OrderPaid"]

    assert not ENVELOPE_FIELDS & set(placed["properties"])
    assert set(placed["required"]) == {
        "order_id",
        "customer_email",
        "lines",
        "total",
        "currency",
        "placed_at",
    }
    assert placed["additionalProperties"] is False
    assert placed["properties"]["lines"]["items"] == {"$ref": "#/components/schemas/OrderLine"}
    assert "OrderLine" in schemas
    assert placed["properties"]["pick"]["items"] == [{"type": "string"}, {"type": "integer"}]
    assert "prefixItems" not in json.dumps(schemas)
    assert "discriminator" not in paid["properties"]["method"]  # AsyncAPI's is a string
    assert len(paid["properties"]["method"]["oneOf"]) == 2
    assert "A customer placed an order." in doc["components"]["messages"]["OrderPlaced"]["summary"]
    assert "$defs" not in json.dumps(doc)
    assert doc["components"]["messages"]["ParcelShipped"]["x-hexbus-event"]["version"] == 2
    headers = doc["components"]["messages"]["ParcelShipped"]["headers"]["properties"]
    assert headers["ce_eventversion"]["const"] == "2"


# -- output and secrets ----------------------------------------------------------------
@pytest.mark.parametrize("adapter", ["rabbitmq", "kafka", "memory"])
@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_no_password_or_user_in_any_document(adapter: str, fmt: str) -> None:
    env = {"HEXBUS_KAFKA_BOOTSTRAP_SERVERS": f"SASL_SSL://kuser:{SECRET}@k1.internal:9092"}
    for path in (SHOP, DEMO):
        text = generate("--app", path, "--adapter", adapter, "--format", fmt, env=env)
        assert SECRET not in text
        assert "shopper" not in text and "kuser" not in text
    if adapter == "kafka":
        assert yaml.safe_load(text)["servers"]["kafka"]["host"] == "k1.internal:9092"


def test_an_unreadable_rabbitmq_url_fails_without_echoing_the_password() -> None:
    env = {**ENV, "HEXBUS_RABBITMQ_URL": f"amqp://shopper:{SECRET}@rabbit:notaport/"}
    result = runner.invoke(app, ["asyncapi", "--app", SHOP, "--adapter", "rabbitmq"], env=env)

    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "HEXBUS_RABBITMQ_URL" in text and "***" in text
    assert SECRET not in result.output


def test_yaml_and_json_are_the_same_document_and_output_files_pick_their_format(
    tmp_path: Path,
) -> None:
    as_json = json.loads(generate("--app", SHOP, "--adapter", "kafka"))
    as_yaml = yaml.safe_load(generate("--app", SHOP, "--adapter", "kafka", "--format", "yaml"))
    assert as_yaml == as_json
    assert "&id" not in generate("--app", SHOP, "--adapter", "kafka", "--format", "yaml")

    generate("--app", SHOP, "--adapter", "kafka", "--output", str(tmp_path / "shop.yaml"))
    generate("--app", SHOP, "--adapter", "kafka", "-o", str(tmp_path / "shop.json"))
    assert (tmp_path / "shop.yaml").read_text().startswith("asyncapi: 3.0.0\n")
    assert json.loads((tmp_path / "shop.json").read_text()) == as_json
    # The same input gives the same document (fixed example ids and times): diffable.
    assert json.loads(generate("--app", SHOP, "--adapter", "kafka")) == as_json
    one_line = generate("--app", SHOP, "--adapter", "kafka", "--indent", "0")
    assert one_line.count("\n") == 1 and json.loads(one_line) == as_json


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (["--adapter", "nats"], "--adapter 'nats': choose one of memory, rabbitmq, kafka"),
        (["--format", "xml"], "--format 'xml': choose one of json, yaml"),
    ],
)
def test_unknown_adapter_or_format_says_what_is_allowed(option: list[str], expected: str) -> None:
    result = runner.invoke(app, ["asyncapi", "--app", SHOP, *option], env=ENV)

    assert result.exit_code == 2
    assert expected in " ".join(result.output.split())


def test_an_unwritable_output_path_is_reported(tmp_path: Path) -> None:
    target = tmp_path / "missing-dir" / "doc.yaml"
    result = runner.invoke(app, ["asyncapi", "--app", SHOP, "-o", str(target)], env=ENV)

    assert result.exit_code == 1
    assert "cannot write" in result.output and "--output" in result.output


# -- what the AsyncAPI parser does not check ------------------------------------------
def test_address_problems_finds_variables_and_parameters_that_do_not_pair() -> None:
    doc = {
        "channels": {
            "a": {"address": "orders.{region}"},
            "b": {"address": "orders", "parameters": {"region": {}}},
            "c": {"address": "orders.{region}", "parameters": {"region": {}}},
            "d": {"address": None},
        }
    }

    problems = address_problems(doc)

    assert problems == [
        "channel 'a': address 'orders.{region}' uses {region} without a parameter of that name",
        "channel 'b': parameter 'region' does not appear in address 'orders'",
        "channel 'd' has no address",
    ]


def test_a_name_that_would_read_as_an_address_parameter_is_refused() -> None:
    shop = _shop()
    table = SubscriptionTable()

    async def handler(event: Any) -> None:
        return None

    table.add(shop.StockLow, handler, "restock.{region}")
    settings = load_settings(service_name="shop")

    with pytest.raises(ConfigurationError, match=r"'shop.restock.\{region\}' contains"):
        asyncapi_document([shop.StockLow], table, settings, transport="rabbitmq")
    # Kafka has no per-subscription address: the group id is no channel.
    doc = asyncapi_document([shop.StockLow], table, settings, transport="kafka")
    assert address_problems(doc) == []


def test_render_rejects_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="choose one of json, yaml"):
        render({}, "toml")


def test_a_written_example_the_class_rejects_gives_way_to_one_it_accepts() -> None:
    from pydantic import ConfigDict, Field  # noqa: PLC0415

    class Counted(DomainEvent, event_type="asyncapitest.counted"):
        model_config = ConfigDict(json_schema_extra={"examples": [{"count": "many"}]})
        count: int = Field(ge=3, multiple_of=2)

    try:
        doc = asyncapi_document([Counted], [], load_settings(), transport="kafka")
    finally:
        event_registry.unregister("asyncapitest.counted")

    (message,) = doc["components"]["messages"].values()
    assert [example["payload"] for example in message["examples"]] == [{"count": 4}]
