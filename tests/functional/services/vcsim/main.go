// Minimal vcsim launcher built on Debian's golang-github-vmware-govmomi-dev
// (0.24.2), whose package ships the simulator library but not vcsim/main.go.
// Built and started by tests/functional/services/vmware.py.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"log"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/vmware/govmomi/simulator"
)

func main() {
	model := simulator.VPX()
	flag.IntVar(&model.Datacenter, "dc", model.Datacenter, "datacenters")
	flag.IntVar(&model.Cluster, "cluster", model.Cluster, "clusters per DC")
	flag.IntVar(&model.ClusterHost, "host", model.ClusterHost, "hosts per cluster")
	flag.IntVar(&model.Host, "standalone-host", model.Host, "standalone hosts")
	flag.IntVar(&model.Datastore, "ds", model.Datastore, "local datastores")
	flag.IntVar(&model.Machine, "vm", model.Machine, "VMs per resource pool")
	isESX := flag.Bool("esx", false, "simulate standalone ESX instead of vCenter")
	isTLS := flag.Bool("tls", true, "enable TLS (self-signed)")
	listen := flag.String("l", "127.0.0.1:8989", "listen address (port 0 = random)")
	user := flag.String("username", "", "login user (any accepted if empty)")
	pass := flag.String("password", "", "login password (any accepted if empty)")
	certFile := flag.String("tlscert", "", "PEM certificate (default: Go httptest's built-in RSA-1024 cert)")
	keyFile := flag.String("tlskey", "", "PEM private key for -tlscert")
	wsdlDir := flag.String("wsdl", "", "serve *.wsdl/*.xsd files of this dir at /sdk/<name> (for suds/oslo.vmware)")
	flag.Parse()
	if *pass == "" {
		// from the environment, so that the password never shows in `ps`
		*pass = os.Getenv("VCSIM_PASSWORD")
	}

	if *isESX {
		ds, vm := model.Datastore, model.Machine
		model = simulator.ESX()
		model.Datastore, model.Machine = ds, vm
	}
	if err := model.Create(); err != nil {
		log.Fatal(err)
	}
	u := &url.URL{Host: *listen}
	if *user != "" {
		u.User = url.UserPassword(*user, *pass)
	}
	model.Service.Listen = u
	model.Service.RegisterEndpoints = true
	if *isTLS {
		model.Service.TLS = new(tls.Config)
		if *certFile != "" {
			c, err := tls.LoadX509KeyPair(*certFile, *keyFile)
			if err != nil {
				log.Fatal(err)
			}
			model.Service.TLS.Certificates = []tls.Certificate{c}
		}
	}
	model.Service.ServeMux = http.NewServeMux()
	if *wsdlDir != "" {
		files, _ := filepath.Glob(filepath.Join(*wsdlDir, "*.wsdl"))
		xsds, _ := filepath.Glob(filepath.Join(*wsdlDir, "*.xsd"))
		files = append(files, xsds...)
		for _, f := range files {
			f := f
			model.Service.ServeMux.HandleFunc("/sdk/"+filepath.Base(f), func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/xml")
				http.ServeFile(w, r, f)
			})
		}
	}
	s := model.Service.NewServer()
	fmt.Printf("export GOVC_URL=%s GOVC_SIM_PID=%d\n", s.URL, os.Getpid())
	os.Stdout.Sync()

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	s.Close()
	model.Remove()
}
