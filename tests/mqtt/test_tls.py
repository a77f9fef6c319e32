"""TLS against Mosquitto with a CA made in the test (server and client certificates)."""

from __future__ import annotations

import datetime
import ipaddress

import pytest
import trio

from gatewayd.testing import run_gateway
from helpers import check_complete_in_order, counters, site
from test_connector import connector_status, driver, wait_connected, wait_delivered

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402


def _name(cn: str):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path, key, cert):
    path.with_suffix(".key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path.with_suffix(".crt")), str(path.with_suffix(".key"))


def make_pki(d, cn_ca="gatewayd test CA"):
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name(cn_ca)).issuer_name(_name(cn_ca))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    out = {"ca": _write(d / "ca", ca_key, ca)[0]}

    def leaf(name, cn, usage, san=None):
        key = ec.generate_private_key(ec.SECP256R1())
        b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca.subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return _write(d / name, key, b.sign(ca_key, hashes.SHA256()))

    out["server"] = leaf("server", "localhost", ExtendedKeyUsageOID.SERVER_AUTH,
                         [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    out["client"] = leaf("client", "gatewayd", ExtendedKeyUsageOID.CLIENT_AUTH)
    return out


@pytest.fixture
def pki(tmp_path):
    d = tmp_path / "pki"
    d.mkdir()
    return make_pki(d)


async def test_tls_with_test_ca(tmp_path, pki, broker_factory, subscriber_factory, plugin_path):
    crt, key = pki["server"]
    b = broker_factory(tls={"ca": pki["ca"], "cert": crt, "key": key})
    sub = subscriber_factory(b.port, "gatewayd/#", tls_ca=pki["ca"])
    conn = f'qos = 1\ntls = {{ ca = "{pki["ca"]}" }}'
    async with run_gateway(tmp_path, site(b.port, points=10, connector=conn, driver="per_cycle = 500")) as gw:
        await wait_connected(gw)
        # many small PUBACKs arrive in few TLS records: the reader must drain the SSL object
        driver(gw).produce(5000)
        await wait_delivered(gw, 5000, timeout=20)
        msgs = await sub.wait_count(5000, lambda t: t.endswith("/value"))
        check_complete_in_order(counters(msgs), 5000)
        st = await connector_status(gw)
        assert st["tls"] is True and st["connection"] == "connected"


async def test_tls_client_certificate(tmp_path, pki, broker_factory, plugin_path):
    crt, key = pki["server"]
    b = broker_factory(tls={"ca": pki["ca"], "cert": crt, "key": key, "require_certificate": True})
    ccrt, ckey = pki["client"]
    good = f'tls = {{ ca = "{pki["ca"]}", cert = "{ccrt}", key = "{ckey}" }}\nprotocol = "5"'
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with run_gateway(tmp_path / "a", site(b.port, connector=good)) as gw:
        await wait_connected(gw)
    bad = f'tls = {{ ca = "{pki["ca"]}" }}'
    async with run_gateway(tmp_path / "b", site(b.port, connector=bad)) as gw:
        with trio.fail_after(10):
            while not (await connector_status(gw)).get("last_error"):
                await trio.sleep(0.05)
        assert gw.connectors["up"].instance.state != "connected"
        # TLS 1.3: the broker's "certificate required" alert arrives after the handshake, on the first read
        err = (await connector_status(gw))["last_error"]
        assert "TLS alert from the broker" in err and "CERTIFICATE_REQUIRED" in err.upper(), err


async def test_tls_wrong_ca_is_reported(tmp_path, pki, broker_factory, plugin_path):
    crt, key = pki["server"]
    b = broker_factory(tls={"ca": pki["ca"], "cert": crt, "key": key})
    other = tmp_path / "other"
    other.mkdir()
    wrong = make_pki(other, "some other CA")
    conn = f'tls = {{ ca = "{wrong["ca"]}" }}'
    async with run_gateway(tmp_path, site(b.port, connector=conn)) as gw:
        with trio.fail_after(10):
            while "certificate verification failed" not in ((await connector_status(gw)).get("last_error") or ""):
                await trio.sleep(0.05)


async def test_tls_burst_of_incoming_messages(tmp_path, pki, broker_factory, subscriber_factory, plugin_path):
    """Several MQTT packets in one TLS record: after paho reads one, the rest sit decrypted in the
    SSL object where wait_readable cannot see them; the reader must keep reading while pending()."""
    import json

    crt, key = pki["server"]
    b = broker_factory(tls={"ca": pki["ca"], "cert": crt, "key": key})
    sub = subscriber_factory(b.port, "gatewayd/test/+/+/set/result", tls_ca=pki["ca"], qos=0)
    conn = (f'qos = 0\ntls = {{ ca = "{pki["ca"]}" }}\n'
            '[connectors.up.commands]\nenabled = true\nallow = ["d0/setpoint"]\nqos = 0\n')
    async with run_gateway(tmp_path, site(b.port, connector=conn)) as gw:
        await wait_connected(gw)
        await trio.sleep(0.3)  # the command subscription follows CONNACK
        for i in range(40):
            sub.client.publish("gatewayd/test/d0/setpoint/set", json.dumps({"value": i}), qos=0)
        await sub.wait_count(40, timeout=8)
        assert gw.points.points["d0/setpoint"].value == 39
