#!/usr/bin/env python3
"""Writes the seed corpora fuzz/corpus/response/ and fuzz/corpus/form/ (run from the repo root:
python3 fuzz/gen_seeds.py). The files are committed; rerun this only to change the seeds.

response seed: status (2 bytes, big-endian, status - 100), Retry-After (1 length byte + bytes),
X-Rate-Limit-Reset (1 length byte + bytes), body.  form seed: k, c, data (see fuzz_form.c)."""
import base64
import json
import os
import shutil

# the secrets fuzz_response.c sets in the creds and the entry
PASSWORD = "Fz!pw Correct&Horse=Battery%42"
PASSWORD_ENC = "Fz%21pw+Correct%26Horse%3DBattery%2542"
CLIENT_SECRET = "fzCS_0oa1b2c3d4e5SECRETxyz~"
REFRESH = "fzRT.Rq3vW9xY-refresh-token_77"
CLIENT_ID = "0oafuzzclient"
BASIC = base64.b64encode((CLIENT_ID + ":" + CLIENT_SECRET).encode()).decode()
PASSWORD_PCT = PASSWORD_ENC.replace("+", "%20")
ACCESS = "eyJraWQiOiJmdXp6In0.fzAT.access-token-sig"

JWT = ("eyJraWQiOiJrMSIsImFsZyI6IlJTMjU2In0.eyJ2ZXIiOjEsImp0aSI6IkFULmFiYyIsImlzcyI6Imh0dHBzOi8v"
       "ZXhhbXBsZS5va3RhLmNvbSJ9.c2lnbmF0dXJl")
NEW_RT = "Zq8sYl1tW4pA-rotated-refresh_tok"


def response_seed(status, body, retry_after=b"", rate_reset=b""):
    if isinstance(body, str):
        body = body.encode()
    v = status - 100
    return (bytes([v >> 8, v & 255, len(retry_after)]) + retry_after + bytes([len(rate_reset)]) +
            rate_reset + body)


def ok(**extra):
    d = {"token_type": "Bearer", "expires_in": 3600, "access_token": JWT, "scope": "openid"}
    d.update(extra)
    return json.dumps(d)


def err(code, desc=None, uri=None):
    d = {"error": code}
    if desc is not None:
        d["error_description"] = desc
    if uri is not None:
        d["error_uri"] = uri
    return json.dumps(d)


HTML_502 = ("<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad "
            "Gateway</h1></center>\r\n</body>\r\n</html>\r\n")

RESPONSE = {
    "ok_basic": (200, ok()),
    "ok_refresh": (200, ok(refresh_token=NEW_RT, id_token=JWT)),
    "ok_same_refresh": (200, ok(refresh_token=REFRESH)),
    "ok_no_type_no_expiry": (200, json.dumps({"access_token": JWT})),
    "ok_lowercase_bearer": (200, ok(token_type="bearer")),
    "ok_expires_string": (200, ok(expires_in="3600")),
    "ok_expires_float": (200, ok(expires_in=0.25)),
    "ok_expires_huge": (200, ok(expires_in=1e308)),
    "ok_expires_1e999": (200, '{"access_token":"abc.def","expires_in":1e999}'),
    "ok_expires_nan": (200, '{"access_token":"abc.def","expires_in":NaN}'),
    "ok_expires_hex": (200, '{"access_token":"abc.def","expires_in":"0x10"}'),
    "ok_expires_negative": (200, ok(expires_in=-5)),
    "ok_expires_null": (200, '{"access_token":"abc.def","expires_in":null}'),
    "ok_huge_int": (200, '{"access_token":"abc.def","expires_in":123456789012345678901234567890}'),
    "ok_token_mac": (200, ok(token_type="mac")),
    "ok_token_space": (200, ok(access_token="abc def")),
    "ok_token_ctrl": (200, '{"access_token":"abc\\u0000def","expires_in":60}'),
    "ok_token_number": (200, '{"access_token":12345,"expires_in":60}'),
    "ok_token_empty": (200, '{"access_token":"","expires_in":60}'),
    "ok_nested": (200, '{"access_token":{"value":"x"},"refresh_token":["a"],"expires_in":{"s":1}}'),
    "ok_refresh_bad": (200, ok(refresh_token="has space")),
    "ok_201": (201, ok()),
    "ok_with_error": (200, ok(error="server_error")),
    "ok_echo_secrets": (200, ok(access_token=ACCESS, refresh_token=REFRESH)),
    "array": (200, "[" + ok() + "]"),
    "array_empty": (200, "[]"),
    "scalar_string": (200, '"just a string"'),
    "scalar_number": (200, "42"),
    "null_body": (200, "null"),
    "empty_body": (200, ""),
    "whitespace_body": (200, " \r\n\t "),
    "truncated_json": (200, ok()[:40]),
    "truncated_error": (400, err("invalid_grant", "The refresh token is invalid or expired.")[:30]),
    "deep_nesting": (200, "[" * 1100 + "]" * 1100),
    "dup_keys": (200, '{"access_token":"first","access_token":"second.tok","expires_in":60}'),
    "utf8_escapes": (400, '{"error":"invalid_grant","error_description":"bad \\u00e9\\ud83d\\ude00 \\u001b[31m"}'),
    "invalid_grant": (400, err("invalid_grant", "The refresh token is invalid or expired.")),
    "invalid_client": (401, err("invalid_client", "Client authentication failed.")),
    "invalid_scope": (400, err("invalid_scope", "One or more scopes are not configured.",
                               "https://developer.okta.com/docs/reference/error-codes/")),
    "unsupported_grant": (400, err("unsupported_grant_type", "The authorization grant type is not supported.")),
    "echo_password": (400, err("invalid_grant", "bad password '" + PASSWORD + "' for user")),
    "echo_password_enc": (400, err("invalid_request", "body: grant_type=password&password=" +
                                   PASSWORD_ENC + "&scope=openid")),
    "echo_client_secret": (401, err("invalid_client", "secret " + CLIENT_SECRET + " rejected",
                                    "https://x/?s=" + CLIENT_SECRET)),
    "echo_refresh": (400, err("invalid_grant", "refresh_token=" + REFRESH + " is revoked")),
    "echo_access_in_error": (400, err(ACCESS[:10], "token " + ACCESS)),
    "echo_all_5xx": (503, err("temporarily_unavailable", PASSWORD + " " + CLIENT_SECRET + " " +
                              REFRESH + " " + ACCESS)),
    "echo_long_cut": (400, err("invalid_grant", "x" * 490 + PASSWORD)),
    "echo_long_cut_enc": (503, err("server_error", "y" * 500 + PASSWORD_ENC, "u" * 240 + REFRESH)),
    "echo_password_pct": (400, err("invalid_request", "password=" + PASSWORD_PCT)),
    "echo_basic": (401, err("invalid_client", "Authorization: Basic " + BASIC)),
    "error_not_string": (400, '{"error":{"code":"invalid_grant"},"error_description":7}'),
    "error_empty": (400, '{"error":"","error_description":""}'),
    "error_long": (400, err("e" * 200, "d" * 2000, "u" * 600)),
    "rate_limited": (429, err("too_many_requests", "API call exceeded rate limit due to too many requests."),
                     b"", b"1700000060"),
    "rate_limited_retry_after": (429, '{"errorCode":"E0000047","errorSummary":"API call exceeded rate limit"}',
                                 b"120", b""),
    "retry_after_date": (503, HTML_502, b"Wed, 21 Oct 2015 07:28:00 GMT", b""),
    "retry_after_future_date": (503, "", b"Fri, 31 Dec 2100 23:59:59 GMT", b""),
    "retry_after_negative": (503, "", b"-10", b""),
    "retry_after_inf": (429, "", b"inf", b"nan"),
    "retry_after_huge": (503, "", b"1e308", b""),
    "retry_after_junk": (429, "", b"soon", b"0x7fffffffffffffff"),
    "html_502": (502, HTML_502),
    "html_200": (200, HTML_502),
    "okta_e0000011": (401, '{"errorCode":"E0000011","errorSummary":"Invalid token provided","errorLink":"E0000011","errorId":"oaeXYZ","errorCauses":[]}'),
    "redirect_302": (302, '<a href="https://login.example.com/">Found</a>'),
    "status_100": (100, ""),
    "status_204": (204, ""),
    "status_404": (404, "Not Found"),
    "status_599": (599, ok()),
    "bom_json": (200, "\ufeff" + ok()),
}

# form seeds: k, data (see fuzz_form.c)
FORM = {
    "plain": (6, b"client:secret"),
    "password": (0, PASSWORD.encode()),
    "unicode": (5, "p\u00e4ss w\u00f6rd \u20ac".encode()),
    "ctrl": (3, b"a\x00b\r\n\x7f\xff"),
    "colons": (4, b"id:1:secret:2"),
    "empty": (0, b""),
    "redact_echo": (len(REFRESH), (REFRESH + "error: " + REFRESH + " revoked").encode()),
    "redact_repeat": (4, b"abcdabcdabcdxabcd"),
    "redact_long": (8, b"SECRET12" + b"y" * 600 + b"SECRET12"),
    "redact_overlap": (4, b"aaaaaaaaaaaaa"),
    "redact_mark": (4, b"d][r" + b"x d][r [redacted] d][rd][r"),
    "redact_nul_secret": (5, b"ab\x00cdxab"),  # a secret with a NUL once read past the text
    "redact_nul_text": (4, b"s3c!" + b"a\x00s3c!\x00b"),
    "reserved": (0, b"!*'();:@&=+$,/?#[]% ~-._"),
    "header_tok": (0, ACCESS.encode()),
}


def write(dirname, seeds, fn):
    shutil.rmtree(dirname, ignore_errors=True)
    os.makedirs(dirname)
    for name, args in sorted(seeds.items()):
        with open(os.path.join(dirname, name), "wb") as f:
            f.write(fn(*args))


def form_seed(k, data):
    return bytes([k & 255]) + data


if __name__ == "__main__":
    write("fuzz/corpus/response", RESPONSE, response_seed)
    write("fuzz/corpus/form", FORM, form_seed)
    print("%d response seeds, %d form seeds" % (len(RESPONSE), len(FORM)))
