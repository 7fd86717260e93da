-- The SQL driver over LuaSQL (Debian's lua-sql-sqlite3 and lua-sql-postgres).
--
-- A driver is the small interface the store needs, so a host such as
-- OpenResty can hand in its own connection instead:
--   driver.dialect          "sqlite" | "postgres"
--   driver:exec(sql)        -> rows affected (or true) | nil, err  (statements)
--   driver:query(sql)       -> { row, ... } | nil, err  (rows as name -> string)
--   driver:quote(text)      -> a quoted SQL string literal | nil, err when
--                              the text cannot be written exactly
--   driver:close()
-- LuaSQL (2.6, as Debian ships it) has no parameter binding, so every value
-- goes through quote().
local util = require("jwkengine.util")
local E = require("jwkengine.errors").E

local M = {}
local Driver = {}
Driver.__index = Driver

-- Errors from the database never carry the DSN's password.
local function scrub(self, message)
  message = tostring(message)
  if self.password and self.password ~= "" then
    message = message:gsub(self.password:gsub("%p", "%%%0"), "***")
  end
  return message
end

-- LuaSQL's execute: a cursor, a row count, or nil and a scrubbed error.
local function execute(self, sql)
  local result, err = self.connection:execute(sql)
  if not result then return nil, scrub(self, err) end
  return result
end

function Driver:exec(sql)
  local result, err = execute(self, sql)
  if not result then return nil, err end
  if type(result) == "userdata" then
    result:close()
    return true
  end
  return result
end

function Driver:query(sql)
  local cursor, err = execute(self, sql)
  if not cursor then return nil, err end
  local rows = {}
  if type(cursor) ~= "userdata" then return rows end
  local row = cursor:fetch({}, "a")
  while row do
    rows[#rows + 1] = row
    row = cursor:fetch({}, "a")
  end
  cursor:close()
  return rows
end

-- Both drivers' escape stop at the first NUL byte ("victim\0x" would
-- become 'victim', another set): such text is refused, not shortened.
function Driver:quote(text)
  if type(text) ~= "string" then return nil, "an SQL value must be a string, got " .. type(text) end
  if text:find("\0", 1, true) then return nil, "an SQL value cannot hold a NUL byte" end
  return "'" .. self.connection:escape(text) .. "'"
end

function Driver:close()
  if self.connection then self.connection:close() end
  if self.environment then self.environment:close() end
  self.connection, self.environment = nil, nil
end

-- LuaSQL's driver module `name` (sqlite3, postgres), or the failure that
-- names the Debian package to install.
local function luasql_module(dialect, database, name)
  local ok, luasql = pcall(require, "luasql." .. name)
  if not ok then
    return util.fail(E.ERR_STORE, "%s store needs LuaSQL for %s (Debian: lua-sql-%s)", dialect, database, name)
  end
  return luasql
end

-- Runs a connection's first setting; on failure closes the driver.
local function configure(driver, sql, what)
  local ok, err = driver:exec(sql)
  if not ok then
    driver:close()
    return util.fail(E.ERR_STORE, "cannot configure %s: %s", what, err)
  end
  return driver
end

function M.sqlite(path)
  local luasql, lerr, lcode = luasql_module("sqlite", "SQLite", "sqlite3")
  if not luasql then return nil, lerr, lcode end
  local environment = luasql.sqlite3()
  local connection, err = environment:connect(path)
  if not connection then
    environment:close()
    return util.fail(E.ERR_STORE, "cannot open SQLite database %s: %s", path, tostring(err))
  end
  local driver = setmetatable({ dialect = "sqlite", connection = connection,
    environment = environment }, Driver)
  -- Several processes share the file: wait for a writer instead of failing.
  return configure(driver, "PRAGMA busy_timeout = 30000", "SQLite database " .. path)
end

-- settings: user, password, host, port, database, options (name -> value)
function M.postgres(settings)
  local luasql, lerr, lcode = luasql_module("postgres", "PostgreSQL", "postgres")
  if not luasql then return nil, lerr, lcode end
  -- A libpq conninfo string carries options such as sslmode as well.
  local function value(v) return "'" .. tostring(v):gsub("\\", "\\\\"):gsub("'", "\\'") .. "'" end
  local parts = { "dbname=" .. value(settings.database) }
  if settings.user then parts[#parts + 1] = "user=" .. value(settings.user) end
  if settings.password then parts[#parts + 1] = "password=" .. value(settings.password) end
  if settings.host then parts[#parts + 1] = "host=" .. value(settings.host) end
  if settings.port then parts[#parts + 1] = "port=" .. value(settings.port) end
  for _, name in ipairs(util.sorted_keys(settings.options or {})) do
    parts[#parts + 1] = name .. "=" .. value(settings.options[name])
  end
  local environment = luasql.postgres()
  local driver = setmetatable({ dialect = "postgres", environment = environment,
    password = settings.password }, Driver)
  local connection, err = environment:connect(table.concat(parts, " "))
  if not connection then
    environment:close()
    return util.fail(E.ERR_STORE, "cannot connect to PostgreSQL %s@%s:%s/%s: %s",
      tostring(settings.user), tostring(settings.host), tostring(settings.port),
      tostring(settings.database), scrub(driver, err))
  end
  driver.connection = connection
  return configure(driver, "SET client_min_messages TO WARNING", "PostgreSQL session")
end

return M
