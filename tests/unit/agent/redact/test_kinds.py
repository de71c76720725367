"""Every secret kind the agent must cover, in a log line, a command line and an environment."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import pytest

from hostdiag.agent.redact import Redactor

PEM_BODY = ["MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun",
            "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK",
            "LxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW/VDL5AaWTg0nLVkjRo"]


def pem(kind: str) -> str:
    return "\n".join([f"-----BEGIN {kind}-----", *PEM_BODY, f"-----END {kind}-----"])


@dataclass
class Kind:
    secrets: list[str]
    log: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


GHP = "ghp_R2d2C3poBb8Yoda4Luke5Leia6Han7Chewie9"
JWT = ("eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiI0MiIsImV4cCI6MTcxNDU2MDAwMH0."
       "dGhpcyBpcyBub3QgYSByZWFsIHNpZ25hdHVyZSBidXQgbG9va3MgbGlrZSBvbmU")
AWS_ID = "AKIA4EXAMPLEQ7ZKXWRT"
AWS_SECRET = "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"
GCP_KEY_ID = "3f2a9c0d7e1b4a6f8c5d2e9b0a1f3c7d4e6b8a2c"
GCP_PEM = "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\\n-----END PRIVATE KEY-----\\n"

KINDS: dict[str, Kind] = {
    "password key=value": Kind(
        ["hunter2-Xy9"],
        "2024-05-01T12:00:00Z level=debug msg=connect user=app password=hunter2-Xy9 db=orders",
        ["migrate", "--user", "app", "--password=hunter2-Xy9"],
        {"APP_OPTS": "user=app password=hunter2-Xy9"}),
    "password key: value (YAML)": Kind(
        ["Sup3r$ecret"],
        "  db_password: Sup3r$ecret",
        ["app", "--config-inline", "db_password: Sup3r$ecret"],
        {"APP_CONFIG_YAML": "host: db\npasswd: Sup3r$ecret\n"}),
    "password JSON": Kind(
        ["c0rrect-h0rse"],
        '{"ts":"2024-05-01T12:00:00Z","msg":"login","user":"bob","password":"c0rrect-h0rse"}',
        ["app", "--json", '{"user":"bob","pwd":"c0rrect-h0rse"}'],
        {"SETTINGS_JSON": '{"user":"bob","password":"c0rrect-h0rse"}'}),
    "client_secret / api_key / tokens": Kind(
        ["cs-8d7f6e5a4b3c", "ak-1a2b3c4d5e6f", "at-9z8y7x6w5v", "rt-5t4r3e2w1q", "tk-0p9o8i7u6y",
         "aut-1q2w3e4r5t", "pk-5f4e3d2c1b0a", "sk-7h6g5f4e3d"],
        "client_secret=cs-8d7f6e5a4b3c api_key=ak-1a2b3c4d5e6f apikey: ak-1a2b3c4d5e6f access_token=at-9z8y7x6w5v "
        "refresh_token=rt-5t4r3e2w1q token=tk-0p9o8i7u6y auth_token=aut-1q2w3e4r5t private_key=pk-5f4e3d2c1b0a "
        "secret=sk-7h6g5f4e3d",
        ["client", "--client-secret", "cs-8d7f6e5a4b3c", "--api-key=ak-1a2b3c4d5e6f", "--access-token",
         "at-9z8y7x6w5v", "--refresh-token=rt-5t4r3e2w1q", "--token", "tk-0p9o8i7u6y", "--auth-token",
         "aut-1q2w3e4r5t", "--private-key=pk-5f4e3d2c1b0a", "--secret", "sk-7h6g5f4e3d"],
        {"OAUTH_CLIENT_SECRET": "cs-8d7f6e5a4b3c", "VENDOR_API_KEY": "ak-1a2b3c4d5e6f",
         "ACCESS_TOKEN": "at-9z8y7x6w5v", "REFRESH_TOKEN": "rt-5t4r3e2w1q", "TOKEN": "tk-0p9o8i7u6y",
         "AUTH_TOKEN": "aut-1q2w3e4r5t", "SIGNING_PRIVATE_KEY": "pk-5f4e3d2c1b0a", "APP_SECRET": "sk-7h6g5f4e3d"}),
    "URL credentials": Kind(
        ["p4ssw0rd-url"],
        "2024-05-01T12:00:00Z INFO fetching https://deploy:p4ssw0rd-url@artifacts.example.com/repo/app.tar.gz",
        ["git", "clone", "https://deploy:p4ssw0rd-url@git.example.com/acme/api.git"],
        {"PIP_INDEX_URL": "https://deploy:p4ssw0rd-url@pypi.example.com/simple"}),
    "Authorization bearer": Kind(
        ["abc.def"],
        "> GET /v1/me HTTP/1.1 Authorization: Bearer abc.def",
        ["curl", "-H", "Authorization: Bearer abc.def", "https://api.example.com/v1/me"],
        {"EXTRA_HEADERS": "Authorization: Bearer abc.def"}),
    "Authorization basic": Kind(
        ["Ym9iOmh1bnRlcjI="],
        "> Authorization: Basic Ym9iOmh1bnRlcjI=",
        ["curl", "-H", "Authorization: Basic Ym9iOmh1bnRlcjI=", "https://x"],
        {"UPSTREAM_HEADER": "Authorization: Basic Ym9iOmh1bnRlcjI="}),
    "Proxy-Authorization": Kind(
        ["cHJveHk6czNjcjN0"],
        "> Proxy-Authorization: Basic cHJveHk6czNjcjN0",
        ["curl", "--proxy-header", "Proxy-Authorization: Basic cHJveHk6czNjcjN0", "https://x"],
        {"PROXY_HEADER": "Proxy-Authorization: Basic cHJveHk6czNjcjN0"}),
    "PEM RSA": Kind(PEM_BODY, pem("RSA PRIVATE KEY"), ["app", "--key-pem", pem("RSA PRIVATE KEY")],
                    {"TLS_KEY_PEM": pem("RSA PRIVATE KEY")}),
    "PEM EC": Kind(PEM_BODY, pem("EC PRIVATE KEY"), ["app", "--key-pem", pem("EC PRIVATE KEY")],
                   {"TLS_KEY_PEM": pem("EC PRIVATE KEY")}),
    "PEM OPENSSH": Kind(PEM_BODY, pem("OPENSSH PRIVATE KEY"), ["app", "--key-pem", pem("OPENSSH PRIVATE KEY")],
                        {"DEPLOY_SSH": pem("OPENSSH PRIVATE KEY")}),
    "PEM generic": Kind(PEM_BODY, pem("PRIVATE KEY"), ["app", "--key-pem", pem("PRIVATE KEY")],
                        {"TLS_KEY_PEM": pem("PRIVATE KEY")}),
    "PEM ENCRYPTED": Kind(PEM_BODY, pem("ENCRYPTED PRIVATE KEY"), ["app", "--key-pem", pem("ENCRYPTED PRIVATE KEY")],
                          {"TLS_KEY_PEM": pem("ENCRYPTED PRIVATE KEY")}),
    "JWT": Kind(
        [JWT],
        f'10.0.0.5 - - [01/May/2024:12:00:00 +0000] "GET /cb?id_token={JWT} HTTP/1.1" 302 0',
        ["app", f"--id-token-hint={JWT}"],
        {"OIDC_TEST_ASSERTION": JWT}),
    "AWS access key id": Kind(
        [AWS_ID],
        f"2024-05-01T12:00:00Z INFO boto: using access key {AWS_ID}",
        ["aws", "configure", "set", "aws_access_key_id", AWS_ID],
        {"AWS_ACCESS_KEY_ID": AWS_ID}),
    "AWS secret access key": Kind(
        [AWS_SECRET],
        f"aws_secret_access_key = {AWS_SECRET}",
        ["aws", "configure", "set", "aws_secret_access_key", AWS_SECRET],
        {"AWS_SECRET_ACCESS_KEY": AWS_SECRET, "AWS_CREDS_CSV": f"{AWS_ID},{AWS_SECRET}"}),
    "GCP service-account key": Kind(
        [GCP_KEY_ID, "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"],
        f'{{"type":"service_account","private_key_id":"{GCP_KEY_ID}","private_key":"{GCP_PEM}","client_email":"a@b.iam.gserviceaccount.com"}}',
        ["gcloud", "auth", "activate-service-account", "--key-json",
         f'{{"private_key_id":"{GCP_KEY_ID}","private_key":"{GCP_PEM}"}}'],
        {"GOOGLE_CREDENTIALS_JSON": f'{{"private_key_id":"{GCP_KEY_ID}","private_key":"{GCP_PEM}"}}',
         "GCP_SA": f'{{"private_key_id":"{GCP_KEY_ID}","private_key":"{GCP_PEM}"}}'}),
    "GitHub tokens": Kind(
        [GHP, "github_pat_11ABCDEFG0aBcDeFgHiJkL_mNoPqRsTuVwXyZ0123456789aBcDeFgHiJkLmNoPqRsTuVwXyZ01234",
         "ghs_16C7e42F292c6912E7710c838347Ae178B4a"],
        f"{GHP} github_pat_11ABCDEFG0aBcDeFgHiJkL_mNoPqRsTuVwXyZ0123456789aBcDeFgHiJkLmNoPqRsTuVwXyZ01234 "
        "ghs_16C7e42F292c6912E7710c838347Ae178B4a",
        ["gh", "auth", "login", "--with-token", GHP,
         "github_pat_11ABCDEFG0aBcDeFgHiJkL_mNoPqRsTuVwXyZ0123456789aBcDeFgHiJkLmNoPqRsTuVwXyZ01234",
         "https://x-access-token:ghs_16C7e42F292c6912E7710c838347Ae178B4a@github.com/a/b.git"],
        {"GH_ENTERPRISE_NOTE": GHP, "GIT_ASKPASS_HELPER_OUTPUT": "ghs_16C7e42F292c6912E7710c838347Ae178B4a",
         "RENOVATE_X": "github_pat_11ABCDEFG0aBcDeFgHiJkL_mNoPqRsTuVwXyZ0123456789aBcDeFgHiJkLmNoPqRsTuVwXyZ01234"}),
    "GitLab token": Kind(
        ["glpat-Ab12Cd34Ef56Gh78Ij90"],
        "2024-05-01 registering runner with glpat-Ab12Cd34Ef56Gh78Ij90",
        ["glab", "auth", "login", "--stdin", "glpat-Ab12Cd34Ef56Gh78Ij90"],
        {"CI_REGISTRY_NOTE": "glpat-Ab12Cd34Ef56Gh78Ij90"}),
    "Slack tokens and webhook": Kind(
        ["xoxb-112233445566-778899001122-AbCdEfGhIjKlMnOpQrStUvWx", "xoxp-1-2-3-abcdef0123456789",
         "T01ABCDEF/B02GHIJKL/abcdefghijklmnopqrstuvwx"],
        "slack ready xoxb-112233445566-778899001122-AbCdEfGhIjKlMnOpQrStUvWx user xoxp-1-2-3-abcdef0123456789 "
        "hook https://hooks.slack.com/services/T01ABCDEF/B02GHIJKL/abcdefghijklmnopqrstuvwx",
        ["notify", "xoxb-112233445566-778899001122-AbCdEfGhIjKlMnOpQrStUvWx", "xoxp-1-2-3-abcdef0123456789",
         "https://hooks.slack.com/services/T01ABCDEF/B02GHIJKL/abcdefghijklmnopqrstuvwx"],
        {"NOTIFY_BOT": "xoxb-112233445566-778899001122-AbCdEfGhIjKlMnOpQrStUvWx",
         "NOTIFY_USER": "xoxp-1-2-3-abcdef0123456789",
         "NOTIFY_URL": "https://hooks.slack.com/services/T01ABCDEF/B02GHIJKL/abcdefghijklmnopqrstuvwx"}),
    "Stripe keys": Kind(
        ["sk_live_51Hx0123456789abcdefABCD", "rk_live_51Hx0123456789abcdefABCD", "sk_test_4eC39HqLyjWDarjtT1zdp7dc"],
        "keys sk_live_51Hx0123456789abcdefABCD rk_live_51Hx0123456789abcdefABCD sk_test_4eC39HqLyjWDarjtT1zdp7dc",
        ["stripe", "--api-key", "sk_live_51Hx0123456789abcdefABCD", "rk_live_51Hx0123456789abcdefABCD",
         "sk_test_4eC39HqLyjWDarjtT1zdp7dc"],
        {"PAYMENTS_LIVE": "sk_live_51Hx0123456789abcdefABCD", "PAYMENTS_RESTRICTED": "rk_live_51Hx0123456789abcdefABCD",
         "PAYMENTS_TEST": "sk_test_4eC39HqLyjWDarjtT1zdp7dc"}),
    "connection strings": Kind(
        ["pg-S3cret", "my-S3cret", "mongo-S3cret", "redis-S3cret", "amqp-S3cret", "ado-S3cret", "jdbc-S3cret"],
        "dsns postgresql://app:pg-S3cret@db/x mysql://root:my-S3cret@db/x mongodb+srv://u:mongo-S3cret@c.example.net/x "
        "rediss://default:redis-S3cret@cache:6380 amqp://guest:amqp-S3cret@mq:5672/ "
        "Server=sql;User Id=sa;Password=ado-S3cret; jdbc:postgresql://db/app?user=app&password=jdbc-S3cret",
        ["app", "postgresql://app:pg-S3cret@db/x", "mysql://root:my-S3cret@db/x",
         "mongodb+srv://u:mongo-S3cret@c.example.net/x", "rediss://default:redis-S3cret@cache:6380",
         "amqp://guest:amqp-S3cret@mq:5672/", "Server=sql;User Id=sa;Password=ado-S3cret;",
         "jdbc:postgresql://db/app?user=app&password=jdbc-S3cret"],
        {"DATABASE_URL": "postgresql://app:pg-S3cret@db/x", "MYSQL_DSN": "mysql://root:my-S3cret@db/x",
         "MONGO_URI": "mongodb+srv://u:mongo-S3cret@c.example.net/x", "CACHE_ENDPOINT": "rediss://default:redis-S3cret@cache:6380",
         "BROKER": "amqp://guest:amqp-S3cret@mq:5672/", "MSSQL": "Server=sql;User Id=sa;Password=ado-S3cret;",
         "JDBC": "jdbc:postgresql://db/app?user=app&password=jdbc-S3cret"}),
}


def _assert_gone(out: str, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret not in out, f"{secret!r} survived in {out!r}"
    assert "[REDACTED:" in out


@pytest.mark.parametrize("kind", list(KINDS))
def test_in_a_log_line(redactor: Redactor, kind: str) -> None:
    case = KINDS[kind]
    counts: collections.Counter[str] = collections.Counter()
    out = redactor.redact(case.log, counts)
    _assert_gone(out, case.secrets)
    assert out.count("\n") == case.log.count("\n")
    assert sum(counts.values()) >= 1


@pytest.mark.parametrize("kind", list(KINDS))
def test_in_a_command_line(redactor: Redactor, kind: str) -> None:
    case = KINDS[kind]
    counts: collections.Counter[str] = collections.Counter()
    out = redactor.redact_argv(case.argv, counts)
    assert len(out) == len(case.argv)
    assert out[0] == case.argv[0]
    _assert_gone("\0".join(out), case.secrets)
    assert sum(counts.values()) >= 1


@pytest.mark.parametrize("kind", list(KINDS))
def test_in_an_environment(redactor: Redactor, kind: str) -> None:
    case = KINDS[kind]
    counts: collections.Counter[str] = collections.Counter()
    out = redactor.redact_env(case.env, counts)
    assert list(out) == list(case.env)
    joined = "\0".join(out.values())
    for secret in case.secrets:
        if any(secret in v for v in case.env.values()):
            assert secret not in joined, f"{secret!r} survived in {out!r}"
    assert sum(counts.values()) >= 1
