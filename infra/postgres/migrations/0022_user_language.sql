-- Owner: alerts. Each console user's language (issue #32): 'nb' (Norwegian bokmål) or 'en'. NULL:
-- not chosen yet, so the console follows the browser's Accept-Language, then the centre's default
-- (VAKTROM_ALERTS_LANGUAGE). Notifications to a person use it too. Creates no table.
ALTER TABLE users ADD COLUMN language text CHECK (language IN ('nb', 'en'));
