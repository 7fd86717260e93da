-- Configuration: defaults < file (JSON or YAML) < environment < options.
local config = require "jwkengine.config"
local softhsm = require "helpers.softhsm"

local function write(ext, text)
  local path = os.tmpname() .. ext
  softhsm.write_file(path, text)
  return path
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
    local path = write(".yaml", [[
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
]])
    local cfg = assert(config.load({ config = path, environment = {} }))
    os.remove(path)
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
      local path = write(".yaml", "hsm:\n  pin: " .. pin .. "\n")
      local cfg, err = config.load({ config = path, environment = {} })
      os.remove(path)
      assert(cfg, err)
      assert.equals(pin, cfg.hsm.pin)
    end
  end)

  it("reads every string setting of a YAML file as written, and typed settings as their type", function()
    local path = write(".yaml", [[
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
    local cfg, err = config.load({ config = path, environment = {} })
    os.remove(path)
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
    local path = write(".json", '{"hsm": {"pin": 1234}}')
    local cfg, err, code = config.load({ config = path, environment = {} })
    os.remove(path)
    assert.is_nil(cfg)
    assert.equals("ERR_CONFIG", code)
    assert.matches("hsm.pin must be a string: quote it", err, 1, true)
    assert.not_matches("1234", err)
    cfg, err, code = config.load({ environment = {}, hsm = { token_label = 7 } })
    assert.is_nil(cfg)
    assert.equals("ERR_CONFIG", code)
    assert.matches("hsm.token_label must be a string: quote it", err, 1, true)
    path = write(".json", '{"dsn": 5}')
    cfg, err = config.load({ config = path, environment = {} })
    os.remove(path)
    assert.is_nil(cfg)
    assert.matches("dsn must be a string: quote it", err, 1, true)
    path = write(".json", '{"secrets": {"system": [12345678901234567890]}}')
    cfg, err = config.load({ config = path, environment = {} })
    os.remove(path)
    assert.is_nil(cfg)
    assert.matches("secret #1 must be a string: quote it", err, 1, true)
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
    local cfg, err, code = config.load({ config = "/nonexistent/jwkengine.yaml", environment = {} })
    assert.is_nil(cfg)
    assert.equals("ERR_CONFIG", code)
    assert.matches("/nonexistent/jwkengine.yaml", err, 1, true)

    local path = write(".yaml", "hsm: [unclosed\n")
    cfg, err = config.load({ config = path, environment = {} })
    assert.is_nil(cfg)
    assert.matches("not valid YAML", err)
    os.remove(path)

    path = write(".json", '{"hsm": ')
    cfg, err = config.load({ config = path, environment = {} })
    assert.is_nil(cfg)
    assert.matches("not a JSON object", err)
    os.remove(path)
  end)

  it("rejects unknown hsm keys and wrong types, naming them, without echoing a PIN", function()
    local path = write(".yaml", "hsm:\n  librar: /x.so\n")
    local cfg, err = config.load({ config = path, environment = {} })
    os.remove(path)
    assert.is_nil(cfg)
    assert.matches("unknown setting 'hsm.librar'", err, 1, true)

    cfg, err = config.load({ environment = { HSM_ENABLED = "maybe" } })
    assert.is_nil(cfg)
    assert.matches("HSM_ENABLED must be a boolean", err, 1, true)

    path = write(".json", '{"hsm": {"pin": {"secret": "hunter2"}}}')
    cfg, err = config.load({ config = path, environment = {} })
    os.remove(path)
    assert.is_nil(cfg)
    assert.matches("hsm.pin must be a string", err, 1, true)
    assert.not_matches("hunter2", err)
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
    local cfg, err = config.load({ environment = { SECRETS_SYSTEM = "long-enough-secret-123,tiny" } })
    assert.is_nil(cfg)
    assert.matches("SECRETS_SYSTEM: secret #2 is shorter than 16 characters", err, 1, true)
    assert.not_matches("tiny", err)
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
    local cfg, err, code = config.load({ environment = { HSM_URI = "pkcs11:token=a", HSM_TOKEN_LABEL = "b" } })
    assert.is_nil(cfg)
    assert.equals("ERR_CONFIG", code)
    assert.matches("hsm.uri and hsm.token_label both set", err, 1, true)
    cfg, err, code = config.load({ environment = { HSM_URI = "pkcs11:token=a?pin-value=s3cr3t%zz" } })
    assert.is_nil(cfg)
    assert.equals("ERR_PKCS11_URI", code)
    assert.not_matches("s3cr3t", err)
  end)
end)
