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

/// The contract's names (API.md) are present exactly; a rename is a bug.
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

/// The README's configuration table names every variable the binary reads.
#[test]
fn readme_documents_every_configuration_variable() {
    let readme = repo_file("README.md");
    for (name, _, _) in authd::config::VARIABLES {
        assert!(readme.contains(&format!("`{name}`")), "README.md does not document {name}");
    }
}
