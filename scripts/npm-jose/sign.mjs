// Signs one JWT per case with a fresh key pair made by the npm jose package.
// usage: node sign.mjs CASES.json   where CASES.json is [{alg, kid, claims}]
// prints [{jwks, token}] as JSON; jwks holds the public key (kid, alg, use).
import { readFileSync } from "node:fs";
import { generateKeyPair, exportJWK, SignJWT } from "jose";

const cases = JSON.parse(readFileSync(process.argv[2], "utf8"));
const out = [];
for (const { alg, kid, claims } of cases) {
  const { publicKey, privateKey } = await generateKeyPair(alg, { extractable: true, modulusLength: 2048 });
  const jwk = { ...(await exportJWK(publicKey)), kid, alg, use: "sig" };
  const token = await new SignJWT(claims)
    .setProtectedHeader({ alg, kid, typ: "JWT" })
    .sign(privateKey);
  out.push({ jwks: { keys: [jwk] }, token });
}
process.stdout.write(JSON.stringify(out));
