// Verifies compact JWS tokens with the npm jose package.
// usage: node verify.mjs CASES.json   where CASES.json is [{jwks, token, alg}]
// prints [{ok, payload} | {ok: false, error}] as JSON, one per case.
import { readFileSync } from "node:fs";
import { compactVerify, createLocalJWKSet } from "jose";

const cases = JSON.parse(readFileSync(process.argv[2], "utf8"));
const out = [];
for (const { jwks, token, alg } of cases) {
  try {
    const { payload } = await compactVerify(token, createLocalJWKSet(jwks), { algorithms: [alg] });
    out.push({ ok: true, payload: new TextDecoder().decode(payload) });
  } catch (e) {
    out.push({ ok: false, error: `${e.code || e.name}: ${e.message}` });
  }
}
process.stdout.write(JSON.stringify(out));
