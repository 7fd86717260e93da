// peers.sh's Node.js peer: pkcs11js (npm), the JWT built by hand as its
// users do: claims JSON, base64url, the host's SHA-256 (DigestInfo for
// RS256, the input itself for EdDSA), C_SignInit + C_Sign on one session.
//   node pkcs11js.js MODULE TOKEN PIN ALG KEY_ID_HEX KID SECONDS
const [module_path, label, pin, alg, idHex, kid, seconds] = process.argv.slice(2);
const pkcs11js = require("pkcs11js");
const crypto = require("crypto");
const p = new pkcs11js.PKCS11();
p.load(module_path);
p.C_Initialize();
const slot = p.C_GetSlotList(true).find((s) => p.C_GetTokenInfo(s).label.trim() === label);
const session = p.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION);
p.C_Login(session, pkcs11js.CKU_USER, pin);
p.C_FindObjectsInit(session, [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
  { type: pkcs11js.CKA_ID, value: Buffer.from(idHex, "hex") }]);
const key = p.C_FindObjects(session, 1)[0];
p.C_FindObjectsFinal(session);
const DIGEST_INFO = Buffer.from("3031300d060960864801650304020105000420", "hex");
const mechanism = { mechanism: alg === "EdDSA" ? 0x1057 : alg === "RS256" ? pkcs11js.CKM_RSA_PKCS : pkcs11js.CKM_ECDSA };
const header = Buffer.from(JSON.stringify({ alg, kid, typ: "JWT" })).toString("base64url");
const out = Buffer.alloc(512);

function sign() {
  const now = Math.floor(Date.now() / 1000);
  const claims = { iss: "https://issuer.example", sub: "user-1234567890", aud: "client-app",
    scope: "openid profile", iat: now, exp: now + 300 };
  const input = header + "." + Buffer.from(JSON.stringify(claims)).toString("base64url");
  let data = Buffer.from(input);
  if (alg !== "EdDSA") {
    const digest = crypto.createHash("sha256").update(data).digest();
    data = alg === "RS256" ? Buffer.concat([DIGEST_INFO, digest]) : digest;
  }
  p.C_SignInit(session, mechanism, key);
  return input + "." + p.C_Sign(session, data, out).toString("base64url");
}

let token;
for (let i = 0; i < 20; i++) token = sign();
let ops = 0;
const start = process.hrtime.bigint();
const cpuStart = process.cpuUsage();
let elapsed = 0;
while (elapsed < Number(seconds)) {
  for (let i = 0; i < 8; i++) token = sign();
  ops += 8;
  elapsed = Number(process.hrtime.bigint() - start) / 1e9;
}
const cpu = process.cpuUsage(cpuStart);
console.log(`rate ${(ops / elapsed).toFixed(1)}\ncpu_rate ${(ops / ((cpu.user + cpu.system) / 1e6)).toFixed(1)}\ntoken ${token}`);
p.C_Logout(session);
p.C_CloseSession(session);
p.C_Finalize();
