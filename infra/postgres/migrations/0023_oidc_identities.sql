-- Single sign-on with OpenID Connect (issue #33, item 4; docs/single-sign-on.md).
--
-- owner: alerts: oidc_identities
--
-- A person who logs in through the hospital's OpenID provider is an ordinary account row in `users`
-- (so every authorisation and team check applies unchanged), linked here to the provider's identity:
-- the issuer and the subject (`sub`), which the provider never reuses. The link is made at the first
-- login and the account's role and team are set from the provider's claims at every login.
-- Such an account has no password (`password_hash` NULL): it cannot log in with the local form.
-- A session started through the provider keeps its ID token (`id_token`), which the logout hands
-- back to the provider's end-session endpoint as `id_token_hint`; it goes with the session.

CREATE TABLE oidc_identities (
    issuer        text NOT NULL,
    subject       text NOT NULL,
    username      text NOT NULL UNIQUE REFERENCES users (username) ON DELETE CASCADE,
    linked_at     timestamptz NOT NULL DEFAULT now(),
    last_login_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (issuer, subject)
);

COMMENT ON TABLE oidc_identities IS 'owner: alerts';

ALTER TABLE users ALTER COLUMN password_hash DROP NOT NULL;
ALTER TABLE sessions ADD COLUMN id_token text;
