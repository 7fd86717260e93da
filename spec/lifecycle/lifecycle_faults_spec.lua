-- The lifecycle fails closed on a real SoftHSM token (issue 19): every
-- corruption of a set's state objects found from outside, applied by
-- another session on the token (this spec's own token object, as PyKCS11
-- or pkcs11-tool would), after `rotate --now` retired a key. A freshly
-- started process refuses the set by name (never signs with nor publishes
-- the retired key, never raises); one that read a good version keeps it;
-- the documented repair brings signing back. The writer's own failure
-- paths (a raise in the middle of a write, a compare-and-swap lost at the
-- destroy) leave the set as they found it. Injected clocks throughout.
local cjson = require("cjson")
local token_backend = require("jwkengine.lifecycle.token_backend")
local jwkengine = require("jwkengine")
local cli = require("helpers.cli")
local jose = require("helpers.jose")
local lifecycle_helpers = require("helpers.lifecycle")
local softhsm = require("helpers.softhsm")

local function open(token, clock, extra)
  local options = { environment = softhsm.environment(token), logger = false, startup = false,
    now = function() return clock.t end }
  for k, v in pairs(extra or {}) do options[k] = v end
  return assert(jwkengine.open(options))
end

local signer, published, raw_token = lifecycle_helpers.signer, lifecycle_helpers.published, lifecycle_helpers.raw_token

local function state_objects(t, set)
  return assert(t:data_objects(token_backend.APPLICATION, set))
end

-- Replaces every state object of `set` by the given values.
local function replace_states(token, set, values)
  local t = raw_token(token)
  for _, object in ipairs(state_objects(t, set)) do
    if object.value then assert(t:destroy_data(token_backend.APPLICATION, set, object.value)) end
  end
  for _, value in ipairs(values) do assert(t:create_data(token_backend.APPLICATION, set, value)) end
  t:close()
end

-- The set's one valid state value, decoded.
local function current_value(token, set)
  local t = raw_token(token)
  local objects = state_objects(t, set)
  t:close()
  assert.equals(1, #objects)
  return cjson.decode(objects[1].value), objects[1].value
end

-- A set with "old" retired by rotate --now and its new current key.
local function emergency(token, set, t0)
  local clock = { t = t0 }
  local engine = open(token, clock)
  assert(engine:generate(set, "ES256", { kid = "old" }))
  assert.equals("old", signer(engine, set))
  local changes = assert(engine:rotate(set, { now = true }))
  local new
  for _, change in ipairs(changes) do if change.to == "current" then new = change.kid end end
  assert.is_string(new)
  assert.equals(new, signer(engine, set))
  engine:close()
  return new
end

-- Asserts that a fresh process refuses the set by name, and never signs
-- with or publishes `retired`.
local function refuses(token, set, retired, t)
  local engine = open(token, { t = t })
  local ok, err, code = pcall(signer, engine, set)
  assert.is_true(ok, "raised: " .. tostring(err))
  if err == retired then error("the retired key signs again") end
  local kid
  kid, err, code = engine:sign(set, "x")
  assert.is_nil(kid)
  assert.equals("ERR_KEY_STATES_CORRUPT", code, err)
  assert.matches("keys repair " .. set, err, 1, true)
  local kids, jerr, jcode = published(engine, set)
  assert.is_nil(kids, "published: " .. cjson.encode(kids or {}))
  assert.equals("ERR_KEY_STATES_CORRUPT", jcode, jerr)
  local _, verr, vcode = engine:verify(set, "a.b.c")
  assert.equals("ERR_KEY_STATES_CORRUPT", vcode, verr)
  local states, serr, scode = engine:key_states(set)
  assert.is_nil(states)
  assert.equals("ERR_KEY_STATES_CORRUPT", scode, serr)
  -- no write goes over what could not be read
  local _, rerr, rcode = engine:rotate(set)
  assert.equals("ERR_KEY_STATES_CORRUPT", rcode, rerr)
  _, rerr, rcode = engine:rotate(set, { now = true })
  assert.equals("ERR_KEY_STATES_CORRUPT", rcode, rerr)
  engine:close()
end

describe("key states on the token fail closed", function()
  local token
  setup(function() token = softhsm.new_token("lcfaults") end)

  local CORRUPTIONS = {
    { "version as a string", function(v) v.version = tostring(v.version); return cjson.encode(v) end },
    { "records not an object", function(v) v.records = "kids"; return cjson.encode(v) end },
    { "records a list", function(v) v.records = { v.records }; return cjson.encode(v) end },
    { "an empty records list", function(v) return (cjson.encode(v):gsub('"records":%b{}', '"records":[]')) end },
    { "truncated JSON", function(_, raw) return raw:sub(1, #raw // 2) end },
    { "version 1e999", function(v) return (cjson.encode(v):gsub('"version":%d+', '"version":1e999')) end },
    { "a record without times", function(v)
      for _, r in pairs(v.records) do r.times = nil end
      return cjson.encode(v)
    end },
    { "a record of an unknown state", function(v)
      for _, r in pairs(v.records) do r.state = "sideways" end
      return cjson.encode(v)
    end },
  }

  for i, case in ipairs(CORRUPTIONS) do
    it("refuses a set whose state object holds " .. case[1] .. ", and signs again after keys repair", function()
      local set = "c" .. i
      local new = emergency(token, set, 1000)
      local value, raw = current_value(token, set)
      local version = value.version
      replace_states(token, set, { case[2](value, raw) })
      refuses(token, set, "old", 1100)
      -- the CLI's repair: the operator names the key that signs
      local out, err, status = cli.keys(softhsm.environment(token), "repair " .. set .. " --current " .. new)
      assert.equals(0, status, err)
      assert.matches(new, out, 1, true)
      local engine = open(token, { t = 1200 })
      assert.equals(new, signer(engine, set))
      assert.same({ new }, published(engine, set)) -- "old" stays retired: marked on the key
      engine:close()
      -- the repaired value is valid, and above any version a running
      -- process could have read (the corrupt one's may be unknown)
      assert.is_true(current_value(token, set).version > version)
    end)
  end

  it("refuses a set whose state objects were all deleted but whose marker stays", function()
    local new = emergency(token, "gone", 1000)
    replace_states(token, "gone", {})
    local engine = open(token, { t = 1100 })
    local _, err, code = engine:sign("gone", "x")
    assert.is_not_nil(code, err)
    assert.is_nil(published(engine, "gone"))
    engine:close()
    assert(open(token, { t = 1200 }):repair_states("gone", { current = new }))
  end)

  it("never signs with the retired key when every data object of the set is deleted, marker included", function()
    local new = emergency(token, "bare", 1000)
    local t = raw_token(token)
    replace_states(token, "bare", {})
    for _, m in ipairs(assert(t:data_objects(token_backend.MARKER_APPLICATION, "bare"))) do
      t:destroy_data(token_backend.MARKER_APPLICATION, "bare", m.value)
    end
    t:close()
    -- no records at all: the key marked retired on the token stays retired;
    -- the one other key is the only one that may sign
    local engine = open(token, { t = 1100 })
    assert.equals(new, signer(engine, "bare"))
    assert.same({ new }, published(engine, "bare"))
    local _, _, code = engine:sign("bare", "x", { kid = "old" })
    assert.equals("ERR_KEY_STATE", code)
    engine:close()
  end)

  it("never brings back the retired key for a rival object of a higher version naming every key current", function()
    local new = emergency(token, "rival", 1000)
    local value = current_value(token, "rival")
    local forged = { version = value.version + 5, writer = "forger", records = {} }
    for kid in pairs(value.records) do forged.records[kid] = { state = "current", times = { current = 5000 } } end
    local t = raw_token(token)
    assert(t:create_data(token_backend.APPLICATION, "rival", cjson.encode(forged)))
    t:close()
    local engine = open(token, { t = 1100 })
    assert.equals(new, signer(engine, "rival"))
    assert.same({ new }, published(engine, "rival"))
    engine:close()
  end)

  it("skips an unreadable object beside a valid newer one, and stops at one claiming a version as high", function()
    local new = emergency(token, "beside", 1000)
    local value = current_value(token, "beside")
    local logged = {}
    local t = raw_token(token)
    assert(t:create_data(token_backend.APPLICATION, "beside", '{"version":1,"records":{"x":'))
    assert(t:create_data(token_backend.APPLICATION, "beside", "not json at all"))
    local engine = open(token, { t = 1100 }, { logger = function(_, line) logged[#logged + 1] = line end })
    assert.equals(new, signer(engine, "beside"))
    engine:close()
    assert.matches(string.format("unreadable key state object beside version %d is skipped", value.version),
      table.concat(logged, "\n"), 1, true)
    -- a higher version this one cannot read may be a newer format: stop
    local higher = string.format('{"version":%d,"records":{"%s":{"state":"current","times":{"current":1},"x":[]}},'
      .. '"format":"from-the-future","records2":[]}', value.version + 1, new)
    higher = higher:gsub('"times":{"current":1}', '"times":{"current":"one"}')
    assert(t:create_data(token_backend.APPLICATION, "beside", higher))
    t:close()
    refuses(token, "beside", "old", 1200)
  end)

  it("keeps the last good version read while later reads fail, said once, and never writes from it", function()
    local new = emergency(token, "lkg", 1000)
    local clock = { t = 1100 }
    local logged = {}
    local engine = open(token, clock, { logger = function(level, line) logged[#logged + 1] = level .. " " .. line end })
    assert.equals(new, signer(engine, "lkg"))
    local before = current_value(token, "lkg")
    replace_states(token, "lkg", { '{"version":"9","records":{}}' })
    for _ = 1, 3 do
      assert(engine:reload("lkg"))
      assert.equals(new, signer(engine, "lkg"))
      assert.same({ new }, published(engine, "lkg"))
    end
    local said = 0
    for _, line in ipairs(logged) do
      if line:find(string.format("the last good version read (%d) stands", before.version), 1, true) then
        said = said + 1
      end
    end
    assert.equals(1, said, table.concat(logged, "\n"))
    -- a write needs a fresh good read: refused, and the object is untouched
    local _, _, code = engine:rotate("lkg")
    assert.equals("ERR_KEY_STATES_CORRUPT", code)
    local t = raw_token(token)
    local objects = state_objects(t, "lkg")
    t:close()
    assert.equals(1, #objects)
    assert.equals('{"version":"9","records":{}}', objects[1].value)
    engine:close()
  end)

  it("writes nothing over a version 1e999 and does not raise (the old writer destroyed the only object)", function()
    emergency(token, "inf", 1000)
    local value = current_value(token, "inf")
    local corrupt = (cjson.encode(value):gsub('"version":%d+', '"version":1e999'))
    replace_states(token, "inf", { corrupt })
    local engine = open(token, { t = 1100 })
    for _, write in ipairs({
      function() return engine:rotate("inf") end,
      function() return engine:rotate("inf", { now = true }) end,
      function() return engine:maintain({ sets = { "inf" } }) end,
    }) do
      local ok, result, err, code = pcall(write)
      assert.is_true(ok, "raised: " .. tostring(result))
      assert.is_nil(result)
      assert.equals("ERR_KEY_STATES_CORRUPT", code, err)
    end
    engine:close()
    local t = raw_token(token)
    local objects = state_objects(t, "inf")
    t:close()
    assert.equals(1, #objects)
    assert.equals(corrupt, objects[1].value)
  end)
end)

-- A token object that forwards every call to `real`, but the ones given.
local function proxy(real, overrides)
  return setmetatable({}, { __index = function(_, name)
    if overrides[name] then return overrides[name] end
    return function(_, ...) return real[name](real, ...) end
  end })
end

describe("key state writes on the token leave the set as they found it", function()
  local token
  setup(function() token = softhsm.new_token("lcwrites") end)

  it("loses the compare-and-swap when its object is already gone at the destroy: one N+1 object exists", function()
    local t = raw_token(token)
    local other = token_backend.new(t, "")
    assert.is_true(other:write("cas", 0, {}))
    assert.is_true(other:write("cas", 1, { a = { state = "current", times = { current = 1 } } }))
    local mine
    mine = token_backend.new(proxy(t, {
      -- another writer that read version 2 too wins between this writer's
      -- read and its destroy
      destroy_data = function(_, application, label, value)
        assert.is_true(other:write("cas", 2, { b = { state = "current", times = { current = 2 } } }))
        return t:destroy_data(application, label, value)
      end,
    }), "")
    assert.equals(2, assert(mine:read("cas")).version)
    assert.is_false(mine:write("cas", 2, { c = { state = "current", times = { current = 3 } } }))
    local objects = state_objects(t, "cas")
    assert.equals(1, #objects, cjson.encode(objects))
    local value = cjson.decode(objects[1].value)
    assert.equals(3, value.version)
    assert.is_not_nil(value.records.b)
    t:close()
  end)

  it("puts the replaced object back when the create raises, and encodes before it destroys", function()
    local t = raw_token(token)
    local backend = token_backend.new(t, "")
    assert.is_true(backend:write("undo", 0, { a = { state = "current", times = { current = 1 } } }))
    local before = state_objects(t, "undo")[1].value
    local raising = token_backend.new(proxy(t, {
      create_data = function(_, application, label, value)
        if value ~= before then error("a binding that raises") end
        return t:create_data(application, label, value)
      end,
    }), "")
    local ok, won, err = pcall(raising.write, raising, "undo", 1, { a = { state = "previous", times = { previous = 2 } } })
    assert.is_true(ok, "raised: " .. tostring(won))
    assert.is_nil(won)
    assert.matches("a binding that raises", err, 1, true)
    local objects = state_objects(t, "undo")
    assert.equals(1, #objects)
    assert.equals(before, objects[1].value)
    -- a value no reader accepts is refused before anything is destroyed
    local destroyed = false
    local careful = token_backend.new(proxy(t, {
      destroy_data = function(_, ...) destroyed = true; return t:destroy_data(...) end,
    }), "")
    local _, _, code = careful:write("undo", 1, { a = { state = "current", times = { current = 1 / 0 } } })
    assert.equals("ERR_KEY_STATES_CORRUPT", code)
    assert.is_false(destroyed)
    assert.equals(before, state_objects(t, "undo")[1].value)
    t:close()
  end)
end)

describe("key state objects the token cannot hand over", function()
  local token
  setup(function() token = softhsm.new_token("lclength") end)

  -- A state object of `size` bytes under the set's label, made by another
  -- program (PyKCS11: pkcs11-tool stops at 5000 bytes).
  local function write_large(set, size)
    local path = softhsm.tmpname()
    softhsm.write_file(path, string.rep("z", size))
    local out, ok = softhsm.run(string.format("%s spec/helpers/p11_other.py %s %s %s create %s %s %s",
      jose.PYTHON, softhsm.LIBRARY, softhsm.quote(token.label), token.pin,
      softhsm.quote(token_backend.APPLICATION), set, path))
    os.remove(path)
    assert(ok, out)
  end

  it("skips a 70,000-byte object beside the valid one, and refuses the set when it is all there is", function()
    local new = emergency(token, "long", 1000)
    write_large("long", 70000)
    local logged = {}
    local engine = open(token, { t = 1100 }, { logger = function(_, line) logged[#logged + 1] = line end })
    assert.equals(new, signer(engine, "long"))
    assert.same({ new }, published(engine, "long"))
    engine:close()
    assert.matches("unreadable key state object beside version", table.concat(logged, "\n"), 1, true)
    -- alone (the valid one gone): nothing readable, nothing believed
    local t = raw_token(token)
    for _, object in ipairs(state_objects(t, "long")) do
      assert(t:destroy_data(token_backend.APPLICATION, "long", object.value))
    end
    t:close()
    refuses(token, "long", "old", 1200)
  end)
end)

describe("keys that appear on the token", function()
  local token
  setup(function() token = softhsm.new_token("lcappear") end)

  for _, added in ipairs({ "aa", "zzz" }) do
    it("makes a pair added with pkcs11-tool right after keys create (kid " .. added .. ") next, whatever its kid", function()
      local set = "appear-" .. added
      local out, err, status = cli.keys(softhsm.environment(token), "create " .. set .. " ES256 --kid zz")
      assert.equals(0, status, err)
      assert(softhsm.pkcs11_tool_ok(token, "--login --keypairgen --key-type EC:prime256v1 --usage-sign"
        .. " --label " .. set .. " --id " .. softhsm.hex(added)))
      local engine = open(token, { t = os.time() })
      assert.equals("zz", signer(engine, set))
      local states = {}
      for _, key in ipairs(assert(engine:key_states(set))) do states[key.kid] = key.state end
      assert.same({ zz = "current", [added] = "next" }, states)
      engine:close()
      assert.is_string(out)
    end)
  end

  it("starts a set deleted and made again afresh in the process that deleted it", function()
    local clock = { t = 1000 }
    local engine = open(token, clock)
    assert(engine:generate("again", "ES256", { kid = "k1" }))
    assert(engine:rotate("again")) -- a few versions written
    assert(engine:activate("again", "k1"))
    assert.is_true(engine:delete("again")) -- keys and key-state objects
    assert(engine:generate("again", "ES256", { kid = "k2" }))
    assert.equals("k2", signer(engine, "again"))
    clock.t = 1100
    assert(engine:rotate("again"))
    assert.equals("k2", signer(engine, "again"))
    engine:close()
  end)

  it("names no signer for a set of several pairs and no records until the operator activates one", function()
    for _, kid in ipairs({ "p1", "p2" }) do
      assert(softhsm.pkcs11_tool_ok(token, "--login --keypairgen --key-type EC:prime256v1 --usage-sign"
        .. " --label legacy --id " .. softhsm.hex(kid)))
    end
    local engine = open(token, { t = 1000 })
    local _, err, code = engine:sign("legacy", "x")
    assert.equals("ERR_KEY_STATE", code)
    assert.matches("keys activate legacy KID", err, 1, true)
    assert.same({ "p1", "p2" }, published(engine, "legacy"))
    assert(engine:activate("legacy", "p2"))
    assert.equals("p2", signer(engine, "legacy"))
    local states = {}
    for _, key in ipairs(assert(engine:key_states("legacy"))) do states[key.kid] = key.state end
    assert.same({ p1 = "next", p2 = "current" }, states)
    engine:close()
    -- retiring one of several undecided pairs records it, and decides nothing else
    for _, kid in ipairs({ "q1", "q2", "q3" }) do
      assert(softhsm.pkcs11_tool_ok(token, "--login --keypairgen --key-type EC:prime256v1 --usage-sign"
        .. " --label legacy2 --id " .. softhsm.hex(kid)))
    end
    engine = open(token, { t = 1000 })
    assert(engine:retire("legacy2", "q1"))
    local _, _, code2 = engine:sign("legacy2", "x")
    assert.equals("ERR_KEY_STATE", code2)
    assert.same({ "q2", "q3" }, published(engine, "legacy2"))
    engine:close()
  end)
end)
