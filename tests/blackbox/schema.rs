//! `schema/*.graphql` are generated from the code (`authd schema …`); this
//! test fails when they drift. Regenerate with
//! `cargo run -p authd -- schema tenant > schema/tenant.graphql` (and platform).

fn repo_file(rel: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

#[test]
fn tenant_schema_file_matches_the_code() {
    let code = authd_api::tenant_schema::build().sdl();
    assert!(
        repo_file("schema/tenant.graphql") == code,
        "schema/tenant.graphql is stale: run `cargo run -p authd -- schema tenant > schema/tenant.graphql`"
    );
}

#[test]
fn platform_schema_file_matches_the_code() {
    let code = authd_api::platform_schema::build().sdl();
    assert!(
        repo_file("schema/platform.graphql") == code,
        "schema/platform.graphql is stale: run `cargo run -p authd -- schema platform > schema/platform.graphql`"
    );
}

/// The contract's names (docs/api.md) are present exactly; a rename is a bug.
#[test]
fn contract_names_are_in_the_schemas() {
    let tenant = authd_api::tenant_schema::build().sdl();
    for needle in [
        "type Query",
        "type Mutation",
        "me: User!",
        "sessions: [Session!]!",
        "users(first: Int = 50, after: String, emailPrefix: String): UserConnection!",
        "tenantSettings: TenantSettings!",
        "register(input: RegisterInput!): User!",
        "login(input: LoginInput!): LoginResult!",
        "refresh(refreshToken: String): AuthTokens!",
        "logout(refreshToken: String): Boolean!",
        "logoutAll: Int!",
        "revokeSession(id: ID!): Boolean!",
        "updateTenantSettings(input: TenantSettingsInput!): TenantSettings!",
        "setUserDisabled(userId: ID!, disabled: Boolean!): User!",
        "setUserRole(userId: ID!, role: Role!): User!",
        "union LoginResult = AuthTokens | MfaChallenge",
        "enum SigningAlgorithm {\n\tES256\n\tEDDSA\n\tRS256\n}",
        "enum Role {\n\tUSER\n\tADMIN\n}",
        "scalar DateTime",
        "scalar JSON",
        "accessTokenLifetimeMinutes: Int!",
        "recentActivity(first: Int = 20): [AuditEvent!]!",
        // Email (docs/api.md, Email).
        "sendVerificationEmail(redirectUri: String!): Boolean!",
        "verifyEmail(token: String!): User!",
        "requestPasswordReset(email: String!, redirectUri: String!): Boolean!",
        "resetPassword(token: String!, newPassword: String!): Boolean!",
        "changePassword(currentPassword: String!, newPassword: String!): Boolean!",
        "requestMagicLink(email: String!, redirectUri: String!, codeChallenge: String!): Boolean!",
        "requestEmailChange(newEmail: String!, password: String!, redirectUri: String!): Boolean!",
        "confirmEmailChange(token: String!): User!",
        "emailVerified: Boolean!",
        "requireVerifiedEmail: Boolean!",
        "magicLinksEnabled: Boolean!",
        "redirectUri: String",
        // Passkeys (docs/api.md, Passkeys).
        "passkeys: [Passkey!]!",
        "beginPasskeyRegistration: PasskeyOptions!",
        "finishPasskeyRegistration(challengeId: String!, credential: JSON!, name: String): Passkey!",
        "beginPasskeyLogin(email: String): PasskeyOptions!",
        "finishPasskeyLogin(challengeId: String!, credential: JSON!): LoginResult!",
        "renamePasskey(id: ID!, name: String!): Passkey!",
        "deletePasskey(id: ID!): Boolean!",
        "webauthnRpId: String",
        "webauthnOrigins: [String!]!",
        // Single sign-on (docs/api.md, Single sign-on).
        "oauthClients: [OAuthClient!]!",
        "createOAuthClient(input: OAuthClientInput!): OAuthClientCreated!",
        "updateOAuthClient(clientId: String!, input: OAuthClientInput!): OAuthClient!",
        "rotateOAuthClientSecret(clientId: String!): OAuthClientCreated!",
        "deleteOAuthClient(clientId: String!): Boolean!",
        "clientSecret: String",
        "postLogoutRedirectUris: [String!]!",
        "firstParty: Boolean!",
    ] {
        assert!(tenant.contains(needle), "tenant schema lacks {needle:?}");
    }
    let platform = authd_api::platform_schema::build().sdl();
    for needle in [
        "tenants(first: Int = 50, after: String): TenantConnection!",
        "tenant(slug: String!): Tenant",
        "auditEvents(first: Int = 50, after: String): AuditEventConnection!",
        "createTenant(input: CreateTenantInput!): Tenant!",
        "setTenantDisabled(slug: String!, disabled: Boolean!): Tenant!",
        "deleteTenant(slug: String!): Boolean!",
    ] {
        assert!(platform.contains(needle), "platform schema lacks {needle:?}");
    }
}

/// The operations guide names every variable the binary reads.
#[test]
fn operations_guide_documents_every_configuration_variable() {
    let guide = repo_file("docs/operations.md");
    for (name, _, _) in authd::config::VARIABLES {
        assert!(guide.contains(&format!("`{name}`")), "docs/operations.md does not document {name}");
    }
}

/// The API guide names every query and mutation of both schemas.
#[test]
fn api_guide_documents_every_operation() {
    let guide = repo_file("docs/api.md");
    for file in ["schema/tenant.graphql", "schema/platform.graphql"] {
        let sdl = repo_file(file);
        for root in ["type Query {", "type Mutation {"] {
            let Some(start) = sdl.find(root) else { continue };
            let body = &sdl[start + root.len()..];
            let body = &body[..body.find("\n}").unwrap_or(body.len())];
            let mut in_doc = false;
            for raw in body.lines() {
                let line = raw.trim();
                if line.starts_with("\"\"\"") {
                    // A doc block: `"""` alone opens or closes one.
                    if line == "\"\"\"" {
                        in_doc = !in_doc;
                    }
                    continue;
                }
                // Fields sit one tab in; deeper lines are their arguments.
                if in_doc || raw.starts_with("\t\t") || line.starts_with('"') || !line.contains(':') {
                    continue;
                }
                let name: String = line.chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
                if name.is_empty() {
                    continue;
                }
                assert!(
                    guide.contains(&format!("{name}("))
                        || guide.contains(&format!("{name} {{"))
                        || guide.contains(&format!("{{ {name} }}")),
                    "docs/api.md lacks an example of {name} ({file})"
                );
            }
        }
    }
}

/// The repository stands alone: no tracked file points at documents outside
/// it.
#[test]
fn no_tracked_file_refers_outside_the_repository() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new("git").arg("-C").arg(&root).args(["ls-files", "-z"]).output().expect("git");
    assert!(out.status.success());
    // Built at run time, so this file does not name them itself.
    let outside = [["../sha", "red"].concat(), ["API", ".md"].concat(), ["DESIGN", ".md"].concat()];
    let mut offenders = Vec::new();
    for path in String::from_utf8_lossy(&out.stdout).split('\0').filter(|p| !p.is_empty()) {
        let Ok(text) = std::fs::read_to_string(root.join(path)) else { continue };
        if outside.iter().any(|o| text.contains(o.as_str())) {
            offenders.push(path.to_owned());
        }
    }
    assert!(offenders.is_empty(), "files referring outside the repository: {offenders:?}");
}
