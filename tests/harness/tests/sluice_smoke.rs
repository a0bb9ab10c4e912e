mod common;

#[test]
fn sluice_imports_only_what_the_harness_knows() {
    let module = sluice_harness::load_module(&common::sluice_wasm()).unwrap();
    let imports: Vec<String> = module.imports().map(|i| format!("{}.{}", i.module(), i.name())).collect();
    eprintln!("{imports:#?}");
    sluice_harness::check_imports(&module, false).unwrap();
}

#[test]
fn a_limited_rule_answers_429_after_the_limit() {
    let config = r#"{"rules":[{"name":"api","limit":"2/min","strategy":"fixed_window"}]}"#;
    let mut host = common::sluice().config(config).workers(2).build().unwrap();
    let statuses: Vec<u16> = (0..3).map(|_| host.request("GET", "/api/x").source("10.0.0.1:5555").send().status).collect();
    eprintln!("{:#?}", host.logs());
    assert_eq!(statuses, vec![200, 200, 429]);
}
