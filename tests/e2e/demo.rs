use e2e::spawn_system;

#[tokio::test]
async fn the_demo_walks_both_flows_against_a_running_service() {
    // Arrange
    let app = spawn_system().await;

    // Act: the same code `linkctl demo` runs.
    linkctl::demo::run(app.linkctl_clients(), &app.keys)
        .await
        .unwrap();

    // Assert: two devices linked (QR, LuxTrust) and both unlinked (portal, device); then two
    // more linked (LuxTrust) and unlinked together in one call (containment).
    assert_eq!(app.events_of_type("DeviceLinked").await, 4);
    assert_eq!(app.events_of_type("DeviceUnlinked").await, 4);
    assert_eq!(app.events_of_type("DevicesUnlinkedTogether").await, 1);
    assert_eq!(app.events_of_type("BiometricsEnabled").await, 1);
    assert_eq!(app.events_of_type("BiometricsSkipped").await, 1);
}
