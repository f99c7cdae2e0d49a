package main

import (
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

// listenInNetns opens a TCP listener inside the named network namespace.
// The socket stays there after this thread switches back.
func listenInNetns(name, addr string) (net.Listener, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return nil, err
	}
	defer self.Close()
	target, err := os.Open("/run/netns/" + name)
	if err != nil {
		return nil, err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		return nil, fmt.Errorf("enter network namespace %s: %w", name, err)
	}
	listener, listenErr := net.Listen("tcp", addr)
	if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
		panic(fmt.Sprintf("cannot return to the original network namespace: %v", err))
	}
	return listener, listenErr
}

// proxyAPIServer plays kube-proxy for the kubernetes Service: the pod's
// 127.0.0.1:PORT forwards to the API server on this host's loopback, where
// its certificate is valid. It returns the port.
func (d *demo) proxyAPIServer(podNS string) (int, error) {
	u, err := url.Parse(d.env.Config.Host) // https://127.0.0.1:PORT/
	if err != nil {
		return 0, fmt.Errorf("API server address %s: %w", d.env.Config.Host, err)
	}
	port := u.Port()
	listener, err := listenInNetns(podNS, "127.0.0.1:"+port)
	if err != nil {
		return 0, err
	}
	d.onCleanup(func() { listener.Close() })
	go func() {
		for {
			conn, err := listener.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				upstream, err := net.Dial("tcp", "127.0.0.1:"+port)
				if err != nil {
					return
				}
				defer upstream.Close()
				go func() { _, _ = io.Copy(upstream, conn) }()
				_, _ = io.Copy(conn, upstream)
			}()
		}
	}()
	return strconv.Atoi(port)
}
