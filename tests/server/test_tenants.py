"""Three shops on one server (`vitrine serve --tenants`): seeded synthetic catalogs shaped like a fashion shop, a
library of paper abstracts and a photo site with captions, each tenant answering only from its own catalog, models
loaded once, API keys tried crosswise on every RPC, quotas, TLS, tenants created and dropped while the others serve,
and an interleaving experiment credited through Feedback. None of it is about relevance, so no shared data is read."""
from __future__ import annotations

import datetime
import itertools
import json
import random
import threading
from pathlib import Path

import grpc
import pytest

from vitrine.indexer.ann import AnnConfig
from vitrine.indexer.bundle import IndexerConfig, build_bundle
from vitrine.indexer.catalog import Item
from vitrine.proto import search_pb2, search_pb2_grpc
from vitrine.serving.pool import ModelPool
from vitrine.server.admin import TenantManager, tenant_opener
from vitrine.serving.assemble import Served
from vitrine.server.app import ServerOptions, create_server, single
from vitrine.server.auth import KeyStore, channel_credentials, create_key, server_credentials
from vitrine.server.client import TENANT_HEADER, CatalogClient, VitrineClient
from vitrine.server.tenants import Tenants

SHOPS = ("fashion", "papers", "photos")
N_ITEMS = 30
COLORS = ("Navy Blue", "Black", "Red", "Green", "Grey", "Pink")
ARTICLES = {"Shirts": "Apparel > Topwear > Shirts", "Jeans": "Apparel > Bottomwear > Jeans",
            "Casual Shoes": "Footwear > Shoes > Casual Shoes", "Handbags": "Accessories > Bags > Handbags"}


def fashion_item(rng: random.Random) -> dict:
    brand, gender, style, color, article = (rng.choice(options) for options in (
        ["Nimbus", "Orla", "Kestrel", "Vela"], ["Men", "Women"], ["Solid", "Striped", "Printed", "Checked"], COLORS,
        list(ARTICLES)))
    return {"title": f"{brand} {gender} {style} {color} {article}", "category": ARTICLES[article],
            "attributes": {"gender": gender, "color": color, "article_type": article}}


def paper_item(rng: random.Random) -> dict:
    protein, effect, process, cell = (rng.choice(options) for options in (
        ["TP53", "Notch1", "BRCA2", "Wnt3a", "SIRT1"], ["drives", "suppresses", "delays"],
        ["apoptosis", "autophagy", "senescence", "migration"], ["T", "stem", "tumour", "liver"]))
    return {"title": f"{protein} {effect} {process} in {cell} cells", "category": "Biology",
            "description": f"We show that {protein} {effect} {process} in cultured {cell} cells from "
                           f"{rng.randint(12, 90)} donors, measured over two weeks."}


def photo_item(rng: random.Random) -> dict:
    """A photo site's items have no text of their own; a caption stands in as the title."""
    subject, color, garment, action, place = (rng.choice(options) for options in (
        ["child", "girl", "dog", "man", "woman"], [c.lower() for c in COLORS], ["shirt", "dress", "jacket"],
        ["running", "climbing", "sitting", "jumping"], ["on the beach", "up the stairs", "in the park", "through the snow"]))
    return {"title": f"A {subject} in a {color} {garment} is {action} {place} ."}


def shop_items(shop: str) -> list[Item]:
    """N_ITEMS seeded items with distinct titles. Every shop has ids 1..N_ITEMS, so a leak from another tenant shows
    as a foreign title under an id this shop also has."""
    make = {"fashion": fashion_item, "papers": paper_item, "photos": photo_item}[shop]
    rng = random.Random(SHOPS.index(shop))
    rows: dict[str, dict] = {}
    while len(rows) < N_ITEMS:
        row = make(rng)
        rows.setdefault(row["title"], row)
    return [Item(id=str(n), **row) for n, row in enumerate(rows.values(), 1)]


@pytest.fixture(scope="module")
def shop_bundles(tmp_path_factory, tiny_st) -> dict[str, Path]:
    from vitrine.encoders.text import SentenceTransformerEncoder

    encoder = SentenceTransformerEncoder(tiny_st, device="cpu")
    root = tmp_path_factory.mktemp("shop-bundles")
    out = {}
    for shop in SHOPS:
        out[shop] = root / shop
        build_bundle(shop_items(shop), out[shop], encoder, IndexerConfig(ann=AnnConfig(factory="Flat"), progress=False))
    return out


@pytest.fixture()
def platform(tmp_path, shop_bundles):
    """A --tenants directory with the three shops (fashion with a quota), served with API keys."""
    import shutil

    root = tmp_path / "tenants"
    for shop, bundle in shop_bundles.items():
        shutil.copytree(bundle, root / shop / "bundle")
    (root / "fashion" / "tenant.toml").write_text("[quota]\nqps = 1000\nmax_items = 40\n")
    keys_file = tmp_path / "keys.json"
    keys = {shop: {scope: create_key(keys_file, shop, [scope])[1] for scope in ("search", "write", "admin")} for shop in SHOPS}
    keys["*"] = {"admin": create_key(keys_file, "*", ["admin"])[1]}
    pool = ModelPool()
    tenants = Tenants()
    manager = TenantManager(root, tenants, tenant_opener({}, pool, read_only=False), close_after_s=0.1)
    manager.load_all()
    served = create_server(tenants, "127.0.0.1:0", ServerOptions(manager=manager, keys=KeyStore.load(keys_file)))
    yield {"target": f"127.0.0.1:{served.port}", "keys": keys, "root": root, "pool": pool, "served": served,
           "keys_file": keys_file}
    served.stop(0)
    for tenant in list(tenants):
        tenant.close()


def client(platform, tenant: str | None, scope: str = "search", key_of: str | None = None) -> VitrineClient:
    key = platform["keys"][key_of or tenant][scope] if (key_of or tenant) else None
    return VitrineClient(platform["target"], token=key, tenant=tenant)


def test_each_tenant_answers_only_from_its_own_catalog(platform):
    catalogs = {shop: {it.id: it.title for it in shop_items(shop)} for shop in SHOPS}
    # Every shop is asked every other shop's titles too: a leak would return a foreign (id, title).
    queries = [it.title for shop in SHOPS for it in shop_items(shop)[:5]]
    for shop in SHOPS:
        with client(platform, shop) as c:
            for q in queries:
                for hit in c.search(q, k=5, fields=["title"]).hits:
                    assert catalogs[shop].get(hit.id) == hit.fields["title"], (shop, q, hit.id)
            own = shop_items(shop)[3]
            assert c.search(own.title, k=1).hits[0].id == own.id
            assert c.info()["manifest"]["tenant"] == shop


def test_tenants_share_one_copy_of_the_same_model(platform, tiny_st):
    with VitrineClient(platform["target"], token=platform["keys"]["*"]["admin"]) as c:
        resp = c.list_tenants()
    assert sorted(t.name for t in resp.tenants) == sorted(SHOPS)
    assert {t.items for t in resp.tenants} == {N_ITEMS}
    shared = json.loads(resp.shared_models_json)
    text = [m for m in shared if m["model"].startswith("text ")]
    assert len(text) == 1 and text[0]["users"] == 3 and text[0]["bytes"] > 0     # loaded once for three tenants
    searchers = [t.state.searcher for t in platform["served"].tenants]
    assert searchers[0].text_encoder is searchers[1].text_encoder is searchers[2].text_encoder


RPCS = {  # rpc -> (service, a valid request for the tenant, the scope it needs)
    "Search": ("Search", lambda: search_pb2.SearchRequest(text="shirt"), "search"),
    "Info": ("Search", lambda: search_pb2.InfoRequest(), "search"),
    "Feedback": ("Search", lambda: search_pb2.FeedbackRequest(request_id="x"), "search"),
    "Get": ("Catalog", lambda: search_pb2.GetRequest(ids=["1"]), "search"),
    "Upsert": ("Catalog", lambda: iter([search_pb2.UpsertRequest(item=search_pb2.Item(id="zz", title="new"))]), "write"),
    "Delete": ("Catalog", lambda: search_pb2.DeleteRequest(ids=["nope"]), "write"),
    "Snapshot": ("Catalog", lambda: search_pb2.SnapshotRequest(out_dir="/nonexistent/dir/snap"), "admin"),
    "Reload": ("Admin", lambda: search_pb2.ReloadRequest(bundle="/nonexistent"), "admin"),
    "CreateTenant": ("Admin", lambda: search_pb2.CreateTenantRequest(name="evil", bundle="/nonexistent"), "platform"),
    "ListTenants": ("Admin", lambda: search_pb2.ListTenantsRequest(), "platform"),
    "DropTenant": ("Admin", lambda: search_pb2.DropTenantRequest(name="papers"), "platform"),
}


def call(channel, rpc: str, metadata) -> grpc.StatusCode:
    service, request, _ = RPCS[rpc]
    stub = getattr(search_pb2_grpc, f"{service}Stub")(channel)
    try:
        out = getattr(stub, rpc)(request(), metadata=metadata, timeout=10)
        if rpc == "Upsert":
            list(out)
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()


def test_every_rpc_refuses_every_other_tenants_keys(platform):
    """Crosswise: each tenant's keys (every scope) on each other tenant, every RPC: 0 accesses."""
    channel = grpc.insecure_channel(platform["target"])
    accesses, tried = [], 0
    for owner, target in itertools.permutations(SHOPS, 2):
        for scope, rpc in itertools.product(("search", "write", "admin"), RPCS):
            md = (("authorization", f"Bearer {platform['keys'][owner][scope]}"), (TENANT_HEADER, target))
            code = call(channel, rpc, md)
            tried += 1
            if code != grpc.StatusCode.PERMISSION_DENIED:
                accesses.append((owner, scope, target, rpc, code))
    assert tried == 6 * 3 * len(RPCS) and accesses == []
    for rpc in RPCS:  # no key, or a made-up one
        assert call(channel, rpc, ((TENANT_HEADER, "fashion"),)) == grpc.StatusCode.UNAUTHENTICATED
        assert call(channel, rpc, (("authorization", "Bearer vk_guess"), (TENANT_HEADER, "fashion"))) == grpc.StatusCode.UNAUTHENTICATED
    # Scopes within one tenant: a search key cannot write; every RPC passes its check with the right scope.
    own = lambda scope: (("authorization", f"Bearer {platform['keys']['fashion'][scope]}"), (TENANT_HEADER, "fashion"))  # noqa: E731
    assert call(channel, "Upsert", own("search")) == grpc.StatusCode.PERMISSION_DENIED
    assert call(channel, "Snapshot", own("write")) == grpc.StatusCode.PERMISSION_DENIED
    for rpc, (_, _, scope) in RPCS.items():
        if scope != "platform":
            assert call(channel, rpc, own(scope)) not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED), rpc
    # Even with a valid key, another tenant's request id is unknown to Feedback.
    with client(platform, "papers") as c:
        rid = c.search("cells", k=3).request_id
    with client(platform, "fashion") as c, pytest.raises(grpc.RpcError) as err:
        c.feedback(rid, ["x"])
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # An unknown tenant is NOT_FOUND for a platform key; only fashion's own write key added an item.
    admin = (("authorization", f"Bearer {platform['keys']['*']['admin']}"), (TENANT_HEADER, "nobody"))
    assert call(channel, "Search", admin) == grpc.StatusCode.NOT_FOUND
    assert {t.name: len(t.state.searcher.bundle.docstore) for t in platform["served"].tenants} == {
        "fashion": N_ITEMS + 1, "papers": N_ITEMS, "photos": N_ITEMS}
    channel.close()


def test_a_tenant_is_created_written_searched_and_dropped_while_others_serve(platform, shop_bundles):
    errors, served = [], [0]
    stop = threading.Event()

    def others() -> None:
        with client(platform, "papers") as c:
            while not stop.is_set():
                try:
                    assert c.search("cells", k=3).hits
                    served[0] += 1
                except Exception as exc:  # noqa: BLE001 - counted, then asserted empty
                    errors.append(exc)

    thread = threading.Thread(target=others)
    thread.start()
    try:
        with VitrineClient(platform["target"], token=platform["keys"]["*"]["admin"], timeout_s=120) as admin:
            info = admin.create_tenant("popup", str(shop_bundles["fashion"]), config_toml="[quota]\nqps = 50\n")
            assert info.name == "popup" and info.items == N_ITEMS and json.loads(info.quota_json)["qps"] == 50
            with pytest.raises(grpc.RpcError) as err:
                admin.create_tenant("popup", str(shop_bundles["fashion"]))
            assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
            with pytest.raises(grpc.RpcError) as err:
                admin.create_tenant("Bad Name", str(shop_bundles["fashion"]))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "name" in err.value.details()
            key = create_key(platform["keys_file"], "popup", ["search", "write"])[1]
        # Keys are read at start: a key added later needs a restart; the platform key works meanwhile.
        with CatalogClient(platform["target"], token=platform["keys"]["*"]["admin"], tenant="popup") as cat:
            acks = list(cat.upsert_items([Item(id="p1", title="zebra striped umbrella"), Item(id="p2", title="quokka mug")]))
            assert [a.id for a in acks] == ["p1", "p2"]
        with VitrineClient(platform["target"], token=platform["keys"]["*"]["admin"], tenant="popup") as c:
            assert c.search("zebra umbrella", k=1).hits[0].id == "p1"
        with client(platform, "fashion") as c:  # the source tenant did not get the pop-up's writes
            assert all(h.id not in ("p1", "p2") for h in c.search("zebra umbrella quokka", k=10).hits)
        with VitrineClient(platform["target"], token=platform["keys"]["*"]["admin"]) as admin:
            archived = Path(admin.drop_tenant("popup"))
        from vitrine.indexer.bundle import Bundle

        kept = Bundle(archived / "bundle")   # the archive holds every acknowledged write, checkpointed
        assert kept.docstore.get("p1") is not None and kept.docstore.get("p2") is not None
        kept.close()
        with VitrineClient(platform["target"], token=platform["keys"]["*"]["admin"], tenant="popup") as c, \
                pytest.raises(grpc.RpcError) as err:
            c.search("zebra")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert key
    finally:
        stop.set()
        thread.join()
    assert errors == [] and served[0] > 0


def test_quotas_refuse_one_tenant_without_touching_another(platform, shop_bundles):
    with VitrineClient(platform["target"], token=platform["keys"]["*"]["admin"], timeout_s=120) as admin:
        admin.create_tenant("tiny", str(shop_bundles["papers"]), config_toml="[quota]\nqps = 1\nburst = 2\nmax_items = 31\n")
    import time

    codes = []
    with VitrineClient(platform["target"], token=platform["keys"]["*"]["admin"], tenant="tiny") as c:
        t0 = time.monotonic()
        for _ in range(20):
            try:
                c.search("cells")
                codes.append("ok")
            except grpc.RpcError as exc:
                codes.append(exc.code().name)
                assert "quota" in exc.details() and "'tiny'" in exc.details()
        elapsed = time.monotonic() - t0
    # A bucket of 2 refilled at 1/s: at most 2 + elapsed requests pass, whatever the machine's speed.
    assert codes.count("ok") <= 2 + elapsed + 1 and codes.count("RESOURCE_EXHAUSTED") == 20 - codes.count("ok")
    assert codes.count("RESOURCE_EXHAUSTED") >= 1
    with client(platform, "papers") as c:     # the same catalog in another tenant: unaffected
        assert all(c.search("cells").hits for _ in range(20))
    time.sleep(2.2)  # refill
    with CatalogClient(platform["target"], token=platform["keys"]["*"]["admin"], tenant="tiny") as cat:
        assert [a.id for a in cat.upsert_items([Item(id="n1", title="one more")])] == ["n1"]
        with pytest.raises(grpc.RpcError) as err:
            list(cat.upsert_items([Item(id="n2", title="over the items quota")]))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "31" in err.value.details()


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "server.pem", tmp_path / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_on_the_server_port(tmp_path, small_bundle, keyword_encoder):
    from vitrine.ranking.pipeline import Searcher

    cert, key = _self_signed(tmp_path)
    served = create_server(single(Served(Searcher(small_bundle, keyword_encoder))), "localhost:0",
                           ServerOptions(credentials=server_credentials(cert, key)))
    try:
        with VitrineClient(f"localhost:{served.port}", credentials=channel_credentials(cert)) as c:
            assert c.search("red shirt", k=1).hits[0].id == "1"
        with VitrineClient(f"localhost:{served.port}", timeout_s=3) as plain, pytest.raises(grpc.RpcError) as err:
            plain.search("red shirt")       # plaintext against a TLS port
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        served.stop(0)


def test_interleaving_experiment_credits_clicks_to_teams(tmp_path, shop_bundles, tiny_cross_encoder_dir):
    import shutil

    root = tmp_path / "tenants"
    shutil.copytree(shop_bundles["fashion"], root / "fashion" / "bundle")
    (root / "fashion" / "tenant.toml").write_text(
        f'[experiment]\nname = "ce-vs-none"\nkind = "interleave"\nreranker = "{tiny_cross_encoder_dir}"\n')
    (root / "shop2" / "bundle").parent.mkdir(parents=True)
    shutil.copytree(shop_bundles["fashion"], root / "shop2" / "bundle")
    (root / "shop2" / "tenant.toml").write_text(
        f'[experiment]\nname = "ab1"\nkind = "ab"\nreranker = "{tiny_cross_encoder_dir}"\n')
    tenants = Tenants()
    TenantManager(root, tenants, tenant_opener({}, ModelPool(), read_only=True)).load_all()
    served = create_server(tenants, "127.0.0.1:0")
    try:
        with VitrineClient(f"127.0.0.1:{served.port}", tenant="fashion") as c:
            for n in range(6):
                result = c.search("shirt men", k=6, session=f"s{n}")
                c.feedback(result.request_id, [result.hits[0].id, result.hits[1].id])
        with VitrineClient(f"127.0.0.1:{served.port}", tenant="shop2") as c:
            arms = {}
            for n in range(8):
                for _ in range(2):  # sticky: a session sees one arm
                    result = c.search("shirt", k=5, session=f"u{n}")
                    c.feedback(result.request_id, [result.hits[0].id])
                    c.feedback(result.request_id, [result.hits[0].id])   # the same click reported again counts once
            c.search("shirt", k=5, session="u0")   # an impression nobody clicked
    finally:
        served.stop(0)
        for t in list(tenants):
            t.close()
    raw = [json.loads(x) for x in (root / "fashion" / "logs" / "experiment.jsonl").read_text().splitlines()]
    assert len(raw) == 12 and all(x["kind"] == "interleave" and x["experiment"] == "ce-vs-none" for x in raw)
    from vitrine.ranking.experiments import read_experiment_log

    lines = read_experiment_log(root / "fashion" / "logs" / "experiment.jsonl")   # joined: one row per search
    assert len(lines) == 6 and all(sum(x["credit"].values()) == 2 for x in lines)
    ab = read_experiment_log(root / "shop2" / "logs" / "experiment.jsonl")
    # 16 searches with a click, and the unclicked impression: searches without Feedback count too
    assert len(ab) == 17 and sum(x["clicks"] for x in ab) == 16
    for row in ab:
        arms.setdefault(row["session"], set()).add(row["arm"])
    assert all(len(a) == 1 for a in arms.values()) and len(set().union(*arms.values())) == 2
    assert (root / "shop2" / "logs" / "clicks.jsonl").is_file()   # the tenant's own click log


def test_a_header_sent_twice_is_refused_not_read_two_ways(platform):
    """The key check and the routing read the same single header: a second copy naming another tenant is refused."""
    channel = grpc.insecure_channel(platform["target"])
    key = platform["keys"]["fashion"]["search"]
    for md in ((("authorization", f"Bearer {key}"), (TENANT_HEADER, "papers"), (TENANT_HEADER, "fashion")),
               (("authorization", f"Bearer {key}"), (TENANT_HEADER, "fashion"), (TENANT_HEADER, "papers")),
               (("authorization", f"Bearer {key}"), ("authorization", "Bearer x"), (TENANT_HEADER, "fashion"))):
        for rpc in ("Search", "Get", "Upsert", "Snapshot", "Reload"):
            assert call(channel, rpc, md) == grpc.StatusCode.INVALID_ARGUMENT, (rpc, md)
    channel.close()


def test_tenant_keys_cannot_reach_outside_their_directory(platform, shop_bundles):
    """Snapshot takes a name under the tenant's own directory; Reload loads only from it."""
    channel = grpc.insecure_channel(platform["target"])
    admin = (("authorization", f"Bearer {platform['keys']['fashion']['admin']}"), (TENANT_HEADER, "fashion"))
    stub = search_pb2_grpc.CatalogStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.Snapshot(search_pb2.SnapshotRequest(out_dir=str(platform["root"] / "papers" / "current")), metadata=admin)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "out_dir" in err.value.details()
    resp = stub.Snapshot(search_pb2.SnapshotRequest(out_dir="nightly"), metadata=admin)
    assert Path(resp.path) == platform["root"] / "fashion" / "snapshots" / "nightly" and resp.items >= N_ITEMS
    assert not (platform["root"] / "papers" / "current").exists()
    platform_key = ("authorization", f"Bearer {platform['keys']['*']['admin']}")
    with VitrineClient(platform["target"], token=platform_key[1][7:], timeout_s=120) as c:
        c.create_tenant("ro", str(shop_bundles["papers"]), read_only=True)   # read-only: it can hot-swap
    reload = search_pb2_grpc.AdminStub(channel).Reload
    with pytest.raises(grpc.RpcError) as err:
        reload(search_pb2.ReloadRequest(bundle=str(platform["root"] / "fashion" / "bundle")),
               metadata=(platform_key, (TENANT_HEADER, "ro")))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "outside" in err.value.details()
    resp = reload(search_pb2.ReloadRequest(bundle=str(platform["root"] / "ro" / "bundle")), metadata=(platform_key, (TENANT_HEADER, "ro")))
    assert resp.bundle_version
    channel.close()


def test_a_failed_tenant_load_gives_its_models_back(tmp_path, shop_bundles):
    import shutil

    root = tmp_path / "tenants"
    shutil.copytree(shop_bundles["papers"], root / "ok" / "bundle")
    shutil.copytree(shop_bundles["fashion"], root / "broken" / "bundle")
    (root / "broken" / "tenant.toml").write_text(f'reranker = "{tmp_path / "no-such-model"}"\n')
    pool = ModelPool()
    tenants = Tenants()
    opener = tenant_opener({}, pool, read_only=True)
    tenants.add(opener(__import__("vitrine.serving.tenancy", fromlist=["TenantSpec"]).TenantSpec.read(root / "ok")))
    before = pool.stats()
    with pytest.raises(Exception):
        opener(__import__("vitrine.serving.tenancy", fromlist=["TenantSpec"]).TenantSpec.read(root / "broken"))
    assert pool.stats() == before     # the text model it took for a moment is given back
    for t in list(tenants):
        t.close()
