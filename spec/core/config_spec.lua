-- Configuration: defaults < file (JSON or YAML) < environment < options.
local config = require("jwkengine.config")
local softhsm = require("helpers.softhsm")
local refusal = require("helpers.refusal")

local function write(ext, text)
  local path = os.tmpname() .. ext
  softhsm.write_file(path, text)
  return path
end

-- config.load on a file of `text` (named *ext: the ending picks YAML or
-- JSON) with an empty environment; the file is gone when it returns.
local function load_file(ext, text)
  local path = write(ext, text)
  local cfg, err, code = config.load({ config = path, environment = {} })
  os.remove(path)
  return cfg, err, code
end

-- Asserts that config.load(options) refuses with ERR_CONFIG, the message
-- holding `expected`; returns the message.
local function refused(expected, options)
  return refusal.refused("ERR_CONFIG", expected, config.load(options))
end

-- The same for a file of `text` (YAML unless ext says ".json").
local function refused_file(expected, text, ext)
  return refusal.refused("ERR_CONFIG", expected, load_file(ext or ".yaml", text))
end

describe("configuration", function()
  it("has Hydra's defaults", function()
    local cfg = assert(config.load({ environment = {} }))
    assert.is_false(cfg.hsm.enabled)
    assert.is_nil(cfg.hsm.slot) -- unset means slot 0 (jwkengine.slots.select)
    assert.equals("", cfg.hsm.key_set_prefix)
    assert.equals(4096, cfg.hsm.min_rsa_bits)
    assert.same({
      { set = "hydra.openid.id-token", alg = "RS256" },
      { set = "hydra.jwt.access-token", alg = "RS256" },
    }, cfg.startup_sets)
  end)

  it("reads Hydra's hsm block from YAML, ignoring the rest of a Hydra config", function()
    local cfg = assert(load_file(".yaml", [[
dsn: memory
serve:
  public:
    port: 4444
hsm:
  enabled: true
  library: /usr/lib/softhsm/libsofthsm2.so
  token_label: hydra
  slot: 3
  pin: 1234
  key_set_prefix: app1.
startup_sets:
  hydra.openid.id-token: ES256
  hydra.jwt.access-token: EdDSA
]]))
    assert.is_true(cfg.hsm.enabled)
    assert.equals("/usr/lib/softhsm/libsofthsm2.so", cfg.hsm.library)
    assert.equals("hydra", cfg.hsm.token_label)
    assert.equals(3, cfg.hsm.slot)
    assert.equals("1234", cfg.hsm.pin)
    assert.equals("app1.", cfg.hsm.key_set_prefix)
    assert.same({
      { set = "hydra.jwt.access-token", alg = "EdDSA" },
      { set = "hydra.openid.id-token", alg = "ES256" },
    }, cfg.startup_sets)
  end)

  it("takes a YAML PIN exactly as written, however much it looks like a number", function()
    for _, pin in ipairs({ "01234", "0000", "1e3", "12345678901234567890", "0x1F", "0o17", "1_000",
        "+12", ".5", "yes", "off" }) do
      local cfg, err = load_file(".yaml", "hsm:\n  pin: " .. pin .. "\n")
      assert(cfg, err)
      assert.equals(pin, cfg.hsm.pin)
    end
  end)

  it("reads every string setting of a YAML file as written, and typed settings as their type", function()
    local cfg, err = load_file(".yaml", [[
dsn: 0123
hsm:
  enabled: yes
  slot: 010
  library: 0755
  token_label: 0000
  token_serial: 12345678901234567890
  token_manufacturer: true
  key_set_prefix: 1e3
  pin_file: 1.50
secrets:
  system:
    - 12345678901234567890
startup_sets:
  - set: 2024
    alg: ES256
serve:
  public:
    port: 4444
]])
    assert(cfg, err)
    assert.equals("0123", cfg.dsn)
    assert.is_true(cfg.hsm.enabled)
    assert.equals(8, cfg.hsm.slot) -- an integer setting keeps YAML's reading (octal)
    assert.equals("0755", cfg.hsm.library)
    assert.equals("0000", cfg.hsm.token_label)
    assert.equals("12345678901234567890", cfg.hsm.token_serial)
    assert.equals("true", cfg.hsm.token_manufacturer)
    assert.equals("1e3", cfg.hsm.key_set_prefix)
    assert.equals("1.50", cfg.hsm.pin_file)
    assert.same({ "12345678901234567890" }, cfg.secrets.system)
    assert.same({ { set = "2024", alg = "ES256" } }, cfg.startup_sets)
    assert.equals(4444, cfg.serve.public.port) -- other sections as YAML reads them
  end)

  it("refuses a string setting given as a number where the text is lost, by name, with a hint to quote", function()
    refusal.refused_keeping("1234", "ERR_CONFIG", "hsm.pin must be a string: quote it",
      load_file(".json", '{"hsm": {"pin": 1234}}'))
    refused("hsm.token_label must be a string: quote it", { environment = {}, hsm = { token_label = 7 } })
    refused_file("dsn must be a string: quote it", '{"dsn": 5}', ".json")
    refused_file("secret #1 must be a string: quote it", '{"secrets": {"system": [12345678901234567890]}}', ".json")
  end)

  it("reads JSON, found through JWKENGINE_CONFIG, and lets the environment override it", function()
    local path = write(".json", [[{"hsm": {"enabled": false, "token_label": "file", "slot": 1, "pin": "from-file"}}]])
    local cfg = assert(config.load({ environment = {
      JWKENGINE_CONFIG = path,
      HSM_ENABLED = "true",
      HSM_TOKEN_LABEL = "env",
      HSM_PIN = "from-env",
    } }))
    os.remove(path)
    assert.is_true(cfg.hsm.enabled)
    assert.equals("env", cfg.hsm.token_label)
    assert.equals(1, cfg.hsm.slot) -- only in the file
    assert.equals("from-env", cfg.hsm.pin)
  end)

  it("lets options override the environment", function()
    local cfg = assert(config.load({ environment = { HSM_SLOT = "2" }, hsm = { slot = 5 } }))
    assert.equals(5, cfg.hsm.slot)
  end)

  it("names a missing or malformed file", function()
    refused("/nonexistent/jwkengine.yaml", { config = "/nonexistent/jwkengine.yaml", environment = {} })
    refused_file("not valid YAML", "hsm: [unclosed\n")
    refused_file("not a JSON object", '{"hsm": ', ".json")
  end)

  it("rejects unknown hsm keys and wrong types, naming them, without echoing a PIN", function()
    refused_file("unknown setting 'hsm.librar'", "hsm:\n  librar: /x.so\n")
    refused("HSM_ENABLED must be true or false", { environment = { HSM_ENABLED = "maybe" } })
    refusal.refused_keeping("hunter2", "ERR_CONFIG", "hsm.pin must be a string",
      load_file(".json", '{"hsm": {"pin": {"secret": "hunter2"}}}'))
  end)

  it("reads DSN and comma-separated SECRETS_SYSTEM, over the file's dsn and secrets.system", function()
    local path = write(".yaml", [[
dsn: sqlite:///from/file.sqlite
secrets:
  system:
    - file-secret-0123456789
]])
    local cfg = assert(config.load({ config = path, environment = {} }))
    assert.equals("sqlite:///from/file.sqlite", cfg.dsn)
    assert.same({ "file-secret-0123456789" }, cfg.secrets.system)
    cfg = assert(config.load({ config = path, environment = {
      DSN = "memory", SECRETS_SYSTEM = "new-secret-0123456789,old-secret-0123456789" } }))
    os.remove(path)
    assert.equals("memory", cfg.dsn)
    assert.same({ "new-secret-0123456789", "old-secret-0123456789" }, cfg.secrets.system)
  end)

  it("refuses a short secret anywhere in the list without echoing it", function()
    refusal.refused_keeping("tiny", "ERR_CONFIG", "SECRETS_SYSTEM: secret #2 is shorter than 16 characters",
      config.load({ environment = { SECRETS_SYSTEM = "long-enough-secret-123,tiny" } }))
  end)

  it("takes the token, module and PIN file from an RFC 7512 URI", function()
    local cfg = assert(config.load({ environment = {
      HSM_URI = "pkcs11:token=my%20token;serial=0123abcd?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/secrets/pin",
    } }))
    assert.equals("my token", cfg.hsm.token_label)
    assert.equals("0123abcd", cfg.hsm.token_serial)
    assert.equals("/usr/lib/softhsm/libsofthsm2.so", cfg.hsm.library)
    assert.equals("/run/secrets/pin", cfg.hsm.pin_file)
  end)

  it("refuses a URI that contradicts an explicit setting, and a malformed URI, without the PIN", function()
    refused("hsm.uri and hsm.token_label both set",
      { environment = { HSM_URI = "pkcs11:token=a", HSM_TOKEN_LABEL = "b" } })
    refusal.refused_keeping("s3cr3t", "ERR_PKCS11_URI", nil,
      config.load({ environment = { HSM_URI = "pkcs11:token=a?pin-value=s3cr3t%zz" } }))
  end)
end)

describe("configuration typos", function()
  it("names an unknown key anywhere in the file, with the key it probably meant", function()
    refused_file("unknown setting 'startup_set' (did you mean 'startup_sets'?)",
      "startup_set:\n  a: ES256\n")
    refused_file("unknown setting 'store.cache_tll' (did you mean 'store.cache_ttl'?)",
      "store:\n  cache_tll: 5\n")
    refused_file("unknown setting 'startup_sets[1].algo' (did you mean 'startup_sets[1].alg'?)",
      "startup_sets:\n  - {set: a, algo: ES256}\n")
    refused_file("unknown setting 'secrets.sytem' (did you mean 'secrets.system'?)",
      "secrets:\n  sytem: [aaaaaaaaaaaaaaaaaaaa]\n")
    refused_file("unknown setting 'hsm.token_lable' (did you mean 'hsm.token_label'?)",
      "hsm:\n  token_lable: x\n")
    -- far from every known name: named, with no guess
    local err = refused_file("unknown setting 'colour'", "colour: blue\n")
    assert.not_matches("did you mean", err, 1, true)
  end)

  it("names an unknown key of the jwkengine.open options table", function()
    refused("unknown setting 'confg' (did you mean 'config'?)", { confg = "/etc/x.yaml", environment = {} })
    refused("unknown setting 'startup_sets[1].algo'",
      { environment = {}, startup_sets = { { set = "a", algo = "ES256" } } })
    refused("unknown setting 'store.cache_tll'", { environment = {}, store = { cache_tll = 1 } })
    -- Hydra's sections belong in a Hydra config file, not in the options table
    refused("unknown setting 'serve'", { environment = {}, serve = {} })
  end)

  it("says that hsm, store and secrets must be mappings", function()
    refused_file("hsm must be a mapping", "hsm: [1, 2]\n")
    refused_file("store must be a mapping", "store: 30\n")
    refused("hsm must be a mapping", { environment = {}, hsm = { 1, 2 } })
  end)

  it("reads a whole Hydra config file: Hydra's own sections and secrets.cookie are left alone", function()
    local cfg = assert(load_file(".yaml", table.concat({
      "serve:\n  public:\n    port: 4444\n",
      "urls:\n  self:\n    issuer: https://id.example/\n",
      "log:\n  level: debug\n",
      "oidc:\n  subject_identifiers:\n    supported_types: [public]\n",
      "ttl:\n  access_token: 1h\n",
      "secrets:\n  system: [aaaaaaaaaaaaaaaaaaaaaaaa]\n  cookie: [bbbbbbbbbbbbbbbbbbbbbbbb]\n",
      "dsn: memory\n",
      "hsm:\n  enabled: false\n",
    })))
    assert.equals("memory", cfg.dsn)
    assert.same({ "aaaaaaaaaaaaaaaaaaaaaaaa" }, cfg.secrets.system)
  end)

  it("takes true/false and 1/0 (any case) for HSM_ENABLED and refuses yes/no", function()
    for text, expected in pairs({ ["true"] = true, TRUE = true, ["1"] = true, False = false, ["0"] = false }) do
      local cfg = assert(config.load({ environment = { HSM_ENABLED = text } }))
      assert.equals(expected, cfg.hsm.enabled)
    end
    for _, text in ipairs({ "yes", "no", "on" }) do
      refused("HSM_ENABLED must be true or false", { environment = { HSM_ENABLED = text } })
    end
  end)

  it("reads a startup set's rotation policy from YAML as numbers, the set name as written", function()
    local cfg = assert(load_file(".yaml", table.concat({
      "startup_sets:",
      "  - set: 2024",
      "    alg: ES256",
      "    rotation: { period: 7776000, prepublish: 86400, retain: 172800 }",
      "",
    }, "\n")))
    assert.are.equal("2024", cfg.startup_sets[1].set)
    assert.are.same({ period = 7776000, prepublish = 86400, retain = 172800 }, cfg.startup_sets[1].rotation)
    local policies = assert(require("jwkengine.lifecycle.policy").policies(cfg))
    assert.are.equal(7776000, policies.by_set["2024"].period)
  end)

  it("refuses an empty HSM_PIN or HSM_PIN_FILE when the HSM is enabled", function()
    refused("HSM_PIN (hsm.pin) is set but empty",
      { environment = { HSM_ENABLED = "true", HSM_LIBRARY = "/x.so", HSM_PIN = "" } })
    refused("HSM_PIN_FILE (hsm.pin_file) is set but empty",
      { environment = { HSM_ENABLED = "true", HSM_LIBRARY = "/x.so", HSM_PIN_FILE = "" } })
  end)
end)
