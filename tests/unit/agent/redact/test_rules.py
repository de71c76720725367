"""One example per built-in rule: exact output, and exactly one hit under the rule's name."""

from __future__ import annotations

import collections

import pytest

from hostdiag.agent.redact import Redactor

CASES = [
    ('pem-private-key',
     '-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7\nc2VjcmV0LWJvZHk=\n-----END RSA PRIVATE KEY-----',
     '-----BEGIN RSA PRIVATE KEY-----\n[REDACTED:pem-private-key]\n[REDACTED:pem-private-key]\n-----END RSA PRIVATE KEY-----'),
    ('pem-private-key',
     '"key": "-----BEGIN EC PRIVATE KEY-----\\nMHcCAQEEIIrYSSNQ\\n-----END EC PRIVATE KEY-----"',
     '"key": "-----BEGIN EC PRIVATE KEY-----[REDACTED:pem-private-key]-----END EC PRIVATE KEY-----"'),
    ('auth-bearer',
     'Authorization: Bearer abc.def',
     'Authorization: Bearer [REDACTED:auth-bearer]'),
    ('auth-bearer',
     'Proxy-Authorization: Bearer x',
     'Proxy-Authorization: Bearer [REDACTED:auth-bearer]'),
    ('auth-bearer',
     "curl -H 'authorization: bearer QWxhZGRpbjpvcGVu' https://x",
     "curl -H 'authorization: bearer [REDACTED:auth-bearer]' https://x"),
    ('auth-bearer',
     'got token Bearer 9f8e7d6c5b4a3f2e1d0c from cache',
     'got token Bearer [REDACTED:auth-bearer] from cache'),
    ('auth-basic',
     'Authorization: Basic dXNlcjpodW50ZXIy',
     'Authorization: Basic [REDACTED:auth-basic]'),
    ('auth-basic',
     'Proxy-Authorization: Basic dXNlcjpodW50ZXIy',
     'Proxy-Authorization: Basic [REDACTED:auth-basic]'),
    ('auth-header',
     'Authorization: Token 0123456789abcdef0123',
     'Authorization: Token [REDACTED:auth-header]'),
    ('auth-header',
     'Authorization: Digest username="bob", realm="x", response="6629fae49393a05397450978507c4ef1"',
     'Authorization: Digest [REDACTED:auth-header]'),
    ('cookie-header',
     'Cookie: sessionid=abc123; theme=dark',
     'Cookie: [REDACTED:cookie-header]'),
    ('jwt',
     'callback?id_token=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlX2hlcmU&state=1',
     'callback?id_token=[REDACTED:jwt]&state=1'),
    ('aws-access-key-id',
     'using AKIAIOSFODNN7EXAMPLE for s3',
     'using [REDACTED:aws-access-key-id] for s3'),
    ('aws-access-key-id',
     '"AccessKeyId": "ASIAY34FZKBOKMUTVV7A"',
     '"AccessKeyId": "[REDACTED:aws-access-key-id]"'),
    ('aws-secret-access-key',
     'aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY',
     'aws_secret_access_key = [REDACTED:aws-secret-access-key]'),
    ('aws-secret-access-key',
     '"SecretAccessKey": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",',
     '"SecretAccessKey": "[REDACTED:aws-secret-access-key]",'),
    ('gcp-private-key-id',
     '"private_key_id": "0123456789abcdef0123456789abcdef01234567",',
     '"private_key_id": "[REDACTED:gcp-private-key-id]",'),
    ('github-token',
     'token ghp_0123456789abcdefghijABCDEFGHIJ012345 ok',
     'token [REDACTED:github-token] ok'),
    ('github-token',
     'github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456',
     '[REDACTED:github-token]'),
    ('gitlab-token',
     'glpat-abcdefghij0123456789',
     '[REDACTED:gitlab-token]'),
    ('slack-token',
     'slack xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx',
     'slack [REDACTED:slack-token]'),
    ('slack-webhook',
     'POST https://hooks.slack.com/services/T0000AAAA/B0000BBBB/XXXXXXXXXXXXXXXXXXXXXXXX',
     'POST https://hooks.slack.com/services/[REDACTED:slack-webhook]'),
    ('stripe-key',
     'stripe key sk_live_0123456789abcdefABCDEF in use',
     'stripe key [REDACTED:stripe-key] in use'),
    ('google-api-key',
     'key=AIzaSyA0123456789abcdefghijklmnopqrstuv',
     'key=[REDACTED:google-api-key]'),
    ('npm-token',
     '//registry.npmjs.org/:_authToken=npm_0123456789abcdefghijklmnopqrstuvwxyz',
     '//registry.npmjs.org/:_authToken=[REDACTED:npm-token]'),
    ('pypi-token',
     'twine upload -u __token__ -p pypi-AgEIcHlwaS5vcmcCJDAxMjM0NTY3LTg5YWItY2RlZi0wMTIzLTQ1Njc4OWFiY2RlZgACKlsz dist/*',
     'twine upload -u __token__ -p [REDACTED:pypi-token] dist/*'),
    ('vault-token',
     'VAULT_TOKEN hvs.CAESIJ0123456789abcdefghijkl',
     'VAULT_TOKEN [REDACTED:vault-token]'),
    ('url-credentials',
     'postgres://app:s3cr3t@db:5432/x',
     'postgres://app:[REDACTED:url-credentials]@db:5432/x'),
    ('url-credentials',
     'mongodb+srv://svc:p%40ss@cluster0.example.net/db',
     'mongodb+srv://svc:[REDACTED:url-credentials]@cluster0.example.net/db'),
    ('url-credentials',
     'redis://:hunter2@cache:6379/0',
     'redis://:[REDACTED:url-credentials]@cache:6379/0'),
    ('connstring-password',
     'Server=db;Database=app;User Id=sa;Password=my secret;Encrypt=true',
     'Server=db;Database=app;User Id=sa;Password=[REDACTED:connstring-password];Encrypt=true'),
    ('oracle-credentials',
     'jdbc:oracle:thin:scott/tiger@//ora:1521/ORCL',
     'jdbc:oracle:thin:scott/[REDACTED:oracle-credentials]@//ora:1521/ORCL'),
    ('mysql-cli-password',
     'mysql -h db -uroot -pS3cret! orders',
     'mysql -h db -uroot -p[REDACTED:mysql-cli-password] orders'),
    ('sshpass-password',
     "sshpass -p 'hunter2' ssh host",
     "sshpass -p '[REDACTED:sshpass-password]' ssh host"),
    ('redis-cli-password',
     'redis-cli -h cache -a hunter2 ping',
     'redis-cli -h cache -a [REDACTED:redis-cli-password] ping'),
    ('curl-user',
     'curl -u admin:hunter2 https://x',
     'curl -u admin:[REDACTED:curl-user] https://x'),
    ('openssl-pass-arg',
     'openssl rsa -in k.pem -passin pass:hunter2 -out k2.pem',
     'openssl rsa -in k.pem -passin pass:[REDACTED:openssl-pass-arg] -out k2.pem'),
    ('sql-password',
     "ALTER USER app WITH PASSWORD 'hunter2';",
     "ALTER USER app WITH PASSWORD '[REDACTED:sql-password]';"),
    ('sql-password',
     "CREATE USER 'etl'@'%' IDENTIFIED BY 'hunter2';",
     "CREATE USER 'etl'@'%' IDENTIFIED BY '[REDACTED:sql-password]';"),
    ('netrc-password',
     'machine api.example.com login bob password hunter2',
     'machine api.example.com login bob password [REDACTED:netrc-password]'),
    ('xml-secret',
     '<password>hunter2</password>',
     '<password>[REDACTED:xml-secret]</password>'),
    ('cli-flag-secret',
     './migrate --db-password hunter2 --verbose',
     './migrate --db-password [REDACTED:cli-flag-secret] --verbose'),
    ('password-assign',
     'password=hunter2',
     'password=[REDACTED:password-assign]'),
    ('password-assign',
     '{"user": "bob", "password": "hunter2"}',
     '{"user": "bob", "password": "[REDACTED:password-assign]"}'),
    ('password-assign',
     "  db_password: 'hunter2'",
     "  db_password: '[REDACTED:password-assign]'"),
    ('password-assign',
     'User(name=bob, password=hunter2)',
     'User(name=bob, password=[REDACTED:password-assign])'),
    ('password-assign',
     '{"log":"body {\\"password\\":\\"hunter2\\"}"}',
     '{"log":"body {\\"password\\":\\"[REDACTED:password-assign]\\"}"}'),
    ('secret-assign',
     'client_secret=abcdef123456&grant_type=client_credentials',
     'client_secret=[REDACTED:secret-assign]&grant_type=client_credentials'),
    ('secret-assign',
     '"apiKey": "0123456789abcdef"',
     '"apiKey": "[REDACTED:secret-assign]"'),
    ('secret-assign',
     'X-Api-Key: 0123456789abcdef',
     'X-Api-Key: [REDACTED:secret-assign]'),
    ('auth-assign',
     '{"auths":{"reg.example.com":{"auth":"Ym90Omh1bnRlcjJodW50ZXIy"}}}',
     '{"auths":{"reg.example.com":{"auth":"[REDACTED:auth-assign]"}}}'),
]


@pytest.mark.parametrize(("rule", "text", "expected"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_rule_example(redactor: Redactor, rule: str, text: str, expected: str) -> None:
    counts: collections.Counter[str] = collections.Counter()
    assert redactor.redact(text, counts) == expected
    assert counts == {rule: 1}
    again: collections.Counter[str] = collections.Counter()
    assert redactor.redact(expected, again) == expected
    assert not again


def test_every_text_rule_has_an_example(redactor: Redactor) -> None:
    covered = {c[0] for c in CASES}
    text_rules = {r.name for r in redactor._text_rules} | {r.name for r in redactor._block_rules}
    assert text_rules - covered == set()


CLEAN = [
    "password reset email sent to bob@example.com",
    "Failed password for invalid user admin from 10.0.0.5 port 52144 ssh2",
    "pam_unix(passwd:chauthtok): password changed for bob",
    "Authorization failed for user bob",
    "WWW-Authenticate: Bearer realm=\"api\", error=\"invalid_token\"",
    "missing bearer token on request 42",
    "token bucket empty, refill rate=50/s",
    "prompt_tokens=512 max_tokens=2048",
    "key=42",
    "cache_key=user:42 routing_key=orders.created",
    "public_key: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH9x deploy@web-1",
    "PWD=/home/bob",
    "password_min_length=12",
    "password_file: /run/secrets/db_password",
    "password: ${DB_PASSWORD}",
    "password=********",
    "token: null",
    "api_key: <your-api-key>",
    "secret = vault.read(path)",
    "https://example.com/path?page=2&sort=asc",
    "ssh://git@github.com/acme/api.git",
    "commit 9fceb02d0ae598e95dc970b74767f19372d61af8",
    "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "region ap-southeast-1 (Asia Pacific), timezone Asia/Tokyo",
    "received sig=15 from parent",
    "mysql -h db -u root -p orders",
    "docker run -p 8080:80 nginx",
    "Caused by: java.sql.SQLException: Access denied for user 'app'@'10.0.0.3' (using password: YES)",
]


@pytest.mark.parametrize("line", CLEAN)
def test_look_alikes_are_left_alone(redactor: Redactor, line: str) -> None:
    counts: collections.Counter[str] = collections.Counter()
    assert redactor.redact(line, counts) == line
    assert not counts


def test_auth_assign_keywords_cover_every_form_the_pattern_allows() -> None:
    from hostdiag.agent.redact import load_redactor

    r = load_redactor()
    secret = "dXNlcjpodW50ZXIyaHVudGVyMg=="
    for line in (f'"auth": "{secret}"', f"auth={secret}", f"auth = {secret}", f"auth\t= {secret}",
                 f"auth: {secret}", f"'auth': '{secret}'", f'{{\\"auth\\": \\"{secret}\\"}}'):
        assert secret not in r.redact(line), line
    assert r.redact("auth.session user logged in") == "auth.session user logged in"
