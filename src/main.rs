use convnets::models::{MODELS, NetConfig, Network};
fn main() {
    for m in MODELS {
        let net = Network::from_info(m, NetConfig::default(), tch::Device::Cpu);
        let inp = net.default_input();
        let t = std::time::Instant::now();
        let rec = net.trace(&inp).unwrap();
        println!("{} {} {:?} {}", m.name, net.num_parameters(), t.elapsed(), rec.len());
        if m.name == "googlenet" || m.name == "resnet18" || m.name == "lenet-bn" || m.name == "alexnet" {
            std::fs::write(format!("/tmp/{}.ts.txt", m.name), convnets::summary::torchsummary(&rec, &inp, -1)).unwrap();
            std::fs::write(format!("/tmp/{}.tsb.txt", m.name), convnets::summary::torchsummary(&rec, &inp, m.batch_size)).unwrap();
            std::fs::write(format!("/tmp/{}.ti.txt", m.name), convnets::summary::torchinfo(&rec, &inp, m.batch_size)).unwrap();
        }
    }
    let net = Network::new("alexnet", NetConfig::default(), tch::Device::Cpu).unwrap();
    let t = std::time::Instant::now();
    println!("{}", net.check_input(&[1, 100, 100]).unwrap_err());
    println!("{:?}", t.elapsed());
}
