-- Chaos on an HSM set's key states under real nginx (helpers/chaos_hsm.lua):
-- rival or missing records (a list, every key current, all deleted).
require("helpers.chaos_hsm").describe("rivals", _ENV)
