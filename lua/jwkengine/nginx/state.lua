-- The per-process state of the nginx integration, shared by its files. In
-- the master only `settings` is filled (init); the workers inherit it and
-- add their engine and JWK Set cache. A worker-thread VM has a copy of its
-- own and uses none of it (jwkengine.nginx.threads keeps its engines).
return {
  settings = nil,      -- the checked options (jwkengine.nginx.settings)
  engine = nil,        -- this worker's engine, once open
  metrics = nil,       -- the jwkengine.metrics recorder that engine counts in (open's options.metrics)
  open_error = nil,    -- why the last attempt to open failed
  open_given_up = nil, -- true when that failure is not retried (configuration, PIN)
  open_retry_at = nil, -- ngx.now() of the next attempt to open, when one is scheduled
  jwks_cache = nil,    -- { body = json, etag = '"..."', count = n }
}
