module example.com/prefork-go-drain

go 1.19
