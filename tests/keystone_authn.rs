//! The Keystone authenticator against a real Keystone.

mod common;

use common::keystone::{DEFAULT_DOMAIN_ID, Keystone, unique};

#[tokio::test]
async fn fixture_smoke() {
    let ks = Keystone::shared();
    let admin = ks.admin();
    let d = admin.create_domain(&unique("dom")).await;
    let p = admin
        .create_project(&unique("proj"), &d, &["registry-public"])
        .await;
    admin.add_project_tag(&p, "x").await;
    admin.add_project_tag(&p, "x").await;
    admin.remove_project_tag(&p, "x").await;
    let u = admin
        .create_user(&unique("alice"), DEFAULT_DOMAIN_ID, "pw")
        .await;
    admin.assign_project_role(&u.id, &p, "member").await;
    let ac = admin
        .create_application_credential(&u, &p, &["reader"], Some("2030-01-01T00:00:00"))
        .await;
    admin.delete_application_credential(&u, &ac.id).await;
    admin.change_password(&u.id, "pw2").await;
    admin.disable_user(&u.id).await;
    let own = Keystone::start();
    assert_ne!(own.url(), ks.url());
    own.stop();
}
